"""A busy agent sends no heartbeats: the control plane says (Registered.
any_message_is_alive) that any message proves the agent alive and brings a
silent (NotReady or Lost) node back, and the agent's outbox then skips a heartbeat when a
message went out within the last half interval. Over real gRPC for the
control plane's side; the outbox with a controlled clock."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from agent import outbox as outbox_module
from agent.outbox import Outbox
from controlplane.core.nodes import Liveness
from muster.v1 import agent_pb2 as apb
from tests.controlplane.conftest import plane_with
from tests.security.conftest import connect
from tests.waiting import until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(run_id: int) -> apb.ConnectRequest:
    return apb.ConnectRequest(container_status=apb.ContainerStatus(run_id=run_id))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(outbox_module.time, "monotonic", fake)
    return fake


async def test_a_busy_outbox_skips_heartbeats_only_when_allowed(clock: Clock) -> None:
    outbox = Outbox()
    outbox.put(state(1))
    await outbox.get()
    outbox.heartbeat(2.0)
    assert outbox.qsize() == 1, "a control plane that did not allow it gets every heartbeat"
    assert (await outbox.get()).HasField("heartbeat")

    outbox.quiet_when_busy = True
    outbox.put(state(2))
    await outbox.get()
    clock.now += 0.9
    outbox.heartbeat(2.0)
    assert outbox.qsize() == 0, "a message went out 0.9 s ago: it stands for the heartbeat"
    clock.now += 0.2  # 1.1 s since the last message: more than half the interval
    outbox.heartbeat(2.0)
    assert outbox.qsize() == 1
    assert (await outbox.get()).HasField("heartbeat")


async def test_any_message_brings_a_silent_node_back(tmp_path) -> None:
    liveness = Liveness(not_ready=timedelta(seconds=0.5), lost=timedelta(seconds=1))
    plane = await plane_with(tmp_path, liveness=liveness, tick=timedelta(seconds=0.1))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            agent = await connect(ch, "n1", ["cpu"])
            registered = (await agent.next("registered")).registered
            assert registered.any_message_is_alive

            def status() -> str:
                return {n.name: n.status for n, _, _ in plane.orchestrator.nodes()}["n1"]

            # Silence long enough that n1 is Lost: only a message brings it back.
            await until(lambda: status() == "Lost", 10, "silence to make n1 Lost")
            # Not a heartbeat: a log batch of nothing (any message will do).
            agent.send(log_batch=apb.LogBatch())
            await until(lambda: status() == "Ready", 10, "a message to bring n1 back")
    finally:
        await plane.stop(grace=0.2)
