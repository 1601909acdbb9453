"""The supervisor on its own (fake runtime, a list as the status sink)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from agent.messages import Status, spec_from_start
from agent.runtime import ContainerSpec
from agent.runtime_fake import FakeRuntime
from agent.supervisor import Supervisor
from muster.v1 import agent_pb2
from tests.agent.conftest import eventually
from tests.agent.test_agent_protocol import job

RUNNING = "running"
CREATING = "creating"
REMOVED = "removed"


def start(run_id: int, **fields: object) -> ContainerSpec:
    """The spec a StartContainer for ``run_id`` carries (see ``job``)."""
    return spec_from_start(agent_pb2.StartContainer(**job(run_id, **fields)))


@dataclass
class Node:
    """A supervisor over a fake runtime, watching, with every status it sent."""

    runtime: FakeRuntime
    sup: Supervisor
    sent: list[Status] = field(default_factory=list)

    def states(self, name: str) -> list[str]:
        """States reported for ``name``, in order."""
        return [s.state for s in self.sent if s.name == name]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    runtime = FakeRuntime(node_name="node-a")
    sup = Supervisor(runtime, poll_interval=0.02, probe_interval=0.01, teardown_retry=(0.05, 0.2))
    n = Node(runtime, sup)
    sup.attach(n.sent.append)
    watcher = asyncio.create_task(sup.watch())
    try:
        yield n
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await sup.close()


async def test_failed_removal_is_not_reported_removed_and_is_retried(node: Node) -> None:
    a, b = "muster-run-40-job-0", "muster-run-40-job-1"
    node.sup.handle_start(start(40, args=["sleep 100"]))
    node.sup.handle_start(start(40, replica=1, container_name=b, hostname="h1"))
    await eventually(lambda: RUNNING in node.states(a) and RUNNING in node.states(b))
    node.runtime.fail_next_remove(a, times=2)

    node.sup.handle_teardown(40)
    await eventually(lambda: REMOVED in node.states(b), what=f"{b} REMOVED")
    assert REMOVED not in node.states(a), "a container that is still there is not REMOVED"
    assert a in node.runtime.containers
    assert a in {s.name for s in node.sup.snapshot()}, "still reported at Register"

    # The watch loop retries with backoff until the container is really gone.
    await eventually(lambda: REMOVED in node.states(a), what=f"{a} REMOVED after retries")
    assert a not in node.runtime.containers
    assert node.runtime.remove_calls == 3
    assert node.states(a).count(REMOVED) == 1 and node.states(b).count(REMOVED) == 1
    calls = node.runtime.remove_calls
    await eventually(lambda: node.runtime.list_count > 20, what="more polls")
    assert node.runtime.remove_calls == calls, "no retries once the run is gone"


async def test_start_during_teardown_of_its_run_waits_for_the_teardown(node: Node) -> None:
    name = "muster-run-41-job-0"
    msg = start(41, args=["sleep 100"])
    node.sup.handle_start(msg)
    await eventually(lambda: RUNNING in node.states(name))

    node.sup.handle_teardown(41)
    node.sup.handle_start(msg)  # arrives while the teardown runs
    node.sup.handle_start(msg)  # a duplicate is deferred only once
    await eventually(lambda: node.states(name).count(RUNNING) == 2, what="started again")
    assert node.states(name) == [CREATING, RUNNING, REMOVED, CREATING, RUNNING]
    assert node.runtime.create_count == 2
    assert name in node.runtime.containers
