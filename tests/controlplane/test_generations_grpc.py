"""Placement generations over real gRPC with a hand-driven agent (issue 9): a
report carrying another generation than the run's current placement changes
nothing, whether it comes as a ContainerStatus, inside a ContainerStatusBatch or
in Register.containers after a reconnect. The pure core is tested in
test_generations_and_hosts.py; this proves the generation survives the wire
(dropped there, it would arrive as 0, "unlabelled", and be obeyed)."""

from __future__ import annotations

import grpc

from muster.v1 import agent_pb2 as apb
from muster.v1 import run_pb2 as rpb
from tests.controlplane.test_cluster_grpc import create_job
from tests.controlplane.test_images_grpc import codespecs, status, until_run
from tests.security.conftest import FakeAgent, connect

RUNNING, EXITED = rpb.CONTAINER_STATE_RUNNING, rpb.CONTAINER_STATE_EXITED


def of(generation: int, report: apb.ContainerStatus) -> apb.ContainerStatus:
    """The report, as if from the placement of that generation."""
    report.generation = generation
    return report


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}" * 64


async def handled(ch: grpc.aio.Channel, agent: FakeAgent, start: apb.StartContainer, n: int):
    """Sends a current-generation report with a new image digest and waits until the
    run shows it: the reports sent before it on the stream have been handled."""
    agent.send(container_status=status(start, RUNNING, image_digest=digest(n)))
    return await until_run(
        ch, start.run_id, lambda r: r.replicas[0].image_digest == digest(n), f"digest {n}"
    )


async def test_reports_of_another_generation_change_nothing(ch: grpc.aio.Channel) -> None:
    await codespecs(ch, "img", "img")
    agent = await connect(ch, "n1", ["cpu"])
    await agent.next("registered")
    created = await create_job(ch)
    start = (await agent.next("start_container")).start_container
    assert start.run_id == created.id and start.generation != 0
    stale = start.generation + 1 if start.generation < 2**62 else start.generation - 1
    agent.send(container_status=status(start, RUNNING))
    await until_run(ch, created.id, lambda r: r.status == rpb.RUN_STATUS_RUNNING, "running")

    # Alone and in a batch: an exit of another placement, obeyed it would fail the run.
    agent.send(container_status=of(stale, status(start, EXITED, exit_code=1)))
    gone = of(stale, status(start, rpb.CONTAINER_STATE_REMOVED, exit_code=1))
    agent.send(container_statuses=apb.ContainerStatusBatch(statuses=[gone]))
    run = await handled(ch, agent, start, 1)
    assert (run.status, run.replicas[0].state) == (rpb.RUN_STATUS_RUNNING, RUNNING), run
    assert not run.replicas[0].HasField("exit_code"), run

    # Reconnect: Register lists the current container, then a stale exit of it.
    agent.outbox.put_nowait(None)  # ends this stream
    agent = await connect(
        ch,
        "n1",
        ["cpu"],
        containers=[
            status(start, RUNNING),
            of(stale, status(start, EXITED, exit_code=1)),
        ],
    )
    await agent.next("registered")
    run = await handled(ch, agent, start, 2)
    assert (run.status, run.replicas[0].state) == (rpb.RUN_STATUS_RUNNING, RUNNING), run

    # The current generation is obeyed: the same exit, with it, ends the run.
    agent.send(container_status=status(start, EXITED, exit_code=1))
    done = await until_run(ch, created.id, lambda r: r.status != rpb.RUN_STATUS_RUNNING, "end")
    assert done.status == rpb.RUN_STATUS_FAILED and done.replicas[0].exit_code == 1, done
