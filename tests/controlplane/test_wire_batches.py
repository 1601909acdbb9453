"""Agent messages batched both ways, over real gRPC: a run's starts for one
node travel as one StartContainerBatch (to an agent that accepts them), and
container states as one ContainerStatusBatch, each status still held to node
restriction; agents and control planes that do not announce batches get and
send single messages."""

from __future__ import annotations

import grpc

from agent.outbox import STATUS_BATCH, Outbox
from controlplane.api.agents import START_BATCH, GrpcAgentLink
from controlplane.core.containers import ContainerSpec
from muster.v1 import agent_pb2 as apb
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.controlplane.test_images_grpc import codespecs, get_run, status, until_run
from tests.security.conftest import connect

READY = {"state": rpb.CONTAINER_STATE_RUNNING, "ready": True}


async def create(ch: grpc.aio.Channel, workers: int) -> rpb.Run:
    run = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        worker=rpb.RunCodeTarget(
            codespec=rpb.CodespecRef(named="w"), node_pool="cpu", replicas=workers
        ),
    )
    return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=run))).run


async def test_starts_and_states_travel_in_batches(ch) -> None:
    agent = await connect(ch, "n1", ["cpu"], accepts_start_batches=True)
    registered = (await agent.next("registered")).registered
    assert registered.accepts_status_batches
    await codespecs(ch, "img", "img")
    run = await create(ch, workers=3)

    starts = (await agent.next("start_containers")).start_containers.starts
    assert [(s.role, s.replica) for s in starts] == [(rpb.REPLICA_ROLE_WORKER, i) for i in range(3)]
    # All three ready in one message, plus a running container of a run that
    # does not exist: that one alone is torn down, the others apply.
    stray = apb.ContainerStatus(run_id=run.id + 50, role=rpb.REPLICA_ROLE_JOB, state=3)
    batch = [status(s, **READY) for s in starts] + [stray]  # type: ignore[arg-type]
    agent.send(container_statuses=apb.ContainerStatusBatch(statuses=batch))
    job = (await agent.next("start_containers")).start_containers.starts
    assert (await agent.next("teardown_run")).teardown_run.run_id == run.id + 50
    assert [(s.role, s.replica) for s in job] == [(rpb.REPLICA_ROLE_JOB, 0)]
    assert (await get_run(ch, run.id)).status == rpb.RUN_STATUS_RUNNING

    running, exited = (
        status(job[0], rpb.CONTAINER_STATE_RUNNING),
        status(job[0], rpb.CONTAINER_STATE_EXITED, exit_code=0),
    )
    agent.send(container_statuses=apb.ContainerStatusBatch(statuses=[running, exited]))
    done = await until_run(ch, run.id, lambda r: r.status != rpb.RUN_STATUS_RUNNING, "the end")
    assert done.status == rpb.RUN_STATUS_SUCCEEDED
    assert (await agent.next("teardown_run")).teardown_run.run_id == run.id


async def test_an_agent_that_does_not_accept_batches_gets_single_starts(ch) -> None:
    agent = await connect(ch, "n1", ["cpu"])
    await agent.next("registered")
    await codespecs(ch, "img", "img")
    await create(ch, workers=2)
    first = (await agent.next("start_container")).start_container
    second = (await agent.next("start_container")).start_container
    assert (first.replica, second.replica) == (0, 1)
    kinds = {m.WhichOneof("message") for m in agent.received}
    assert "start_containers" not in kinds


def spec(i: int) -> ContainerSpec:
    return ContainerSpec(i, "worker", i, f"c{i}", f"h{i}", "img")


def test_a_link_batches_consecutive_starts_only_and_caps_a_batch() -> None:
    link = GrpcAgentLink("n1", batch_starts=True)
    for i in range(START_BATCH + 2):
        link.start(spec(i))
    link.teardown(7)
    link.start(spec(99))
    messages = [link.take_nowait() for _ in range(link.qsize())]
    kinds = [m.WhichOneof("message") for m in messages]  # type: ignore[union-attr]
    assert kinds == ["start_containers", "start_containers", "teardown_run", "start_containers"]
    sizes = [len(m.start_containers.starts) for m in messages if m.HasField("start_containers")]  # type: ignore[union-attr]
    assert sizes == [START_BATCH, 2, 1]
    first = messages[0].start_containers.starts  # type: ignore[union-attr]
    assert [s.run_id for s in first] == list(range(START_BATCH))


def state(run_id: int) -> apb.ConnectRequest:
    return apb.ConnectRequest(container_status=apb.ContainerStatus(run_id=run_id))


async def test_the_outbox_merges_consecutive_states_in_order_when_allowed() -> None:
    outbox = Outbox()
    for i in range(3):
        outbox.put(state(i))
    assert (await outbox.get()).container_status.run_id == 0, "merged before Registered allowed it"

    outbox.batch_statuses = True
    outbox.heartbeat()
    for i in range(3, 6):
        outbox.put(state(i))
    outbox.put(apb.ConnectRequest(log_batch=apb.LogBatch(batch_id=1)))
    outbox.put(state(6))
    got = [await outbox.get() for _ in range(4)]
    kinds = [m.WhichOneof("message") for m in got]
    assert kinds == ["container_statuses", "heartbeat", "container_statuses", "log_batch"]
    assert outbox.qsize() == 0
    assert [s.run_id for s in got[0].container_statuses.statuses] == [1, 2]
    assert [s.run_id for s in got[2].container_statuses.statuses] == [3, 4, 5, 6]


async def test_an_outbox_batch_is_capped() -> None:
    outbox = Outbox()
    outbox.batch_statuses = True
    for i in range(STATUS_BATCH + 1):
        outbox.put(state(i))
    first, second = await outbox.get(), await outbox.get()
    assert len(first.container_statuses.statuses) == STATUS_BATCH
    assert second.container_status.run_id == STATUS_BATCH


async def test_a_batch_from_another_node_changes_nothing(ch) -> None:
    """Node restriction holds for every status of a batch: n2 claiming n1's
    workers ready releases nothing; n1's own batch does."""
    holder = await connect(ch, "n1", ["cpu"], accepts_start_batches=True)
    await holder.next("registered")
    await codespecs(ch, "img", "img")
    other = await connect(ch, "n2", ["gpu"], accepts_start_batches=True)
    await other.next("registered")
    run = await create(ch, workers=2)
    starts = (await holder.next("start_containers")).start_containers.starts
    claims = [status(s, **READY) for s in starts]  # type: ignore[arg-type]
    other.send(container_statuses=apb.ContainerStatusBatch(statuses=claims))
    # A numbered log batch is read only after the statuses were handled, and
    # acknowledged once stored: its ack is a barrier.
    other.send(log_batch=apb.LogBatch(batch_id=1))
    await other.next("log_batch_ack")
    seen = await get_run(ch, run.id)
    assert not any(r.ready for r in seen.replicas) and seen.status == rpb.RUN_STATUS_PENDING
    holder.send(container_statuses=apb.ContainerStatusBatch(statuses=claims))
    job = (await holder.next("start_containers")).start_containers.starts
    assert [(s.role, s.replica) for s in job] == [(rpb.REPLICA_ROLE_JOB, 0)]
