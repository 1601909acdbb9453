"""Bounded everything: watches leave nothing behind however they end; caps on
streams (in all and per run) and on pending runs answer RESOURCE_EXHAUSTED
with what to do; an agent's send queue is bounded (overflow closes the link)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.api.agents import _CLOSE, GrpcAgentLink
from controlplane.core.containers import ContainerSpec
from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings
from muster.v1 import agent_pb2 as apb
from muster.v1 import agent_pb2_grpc as agrpc
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.waiting import until

LIMITS = Settings(
    heartbeat_interval=timedelta(seconds=1),
    max_pending_runs=3,
    max_streams=4,
    max_watchers_per_run=2,
)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, rgrpc.RunServiceStub]]:
    cp = await start("127.0.0.1:0", tmp_path / "cp.db", LIMITS)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as ch:
            await cgrpc.CodespecServiceStub(ch).CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
            )
            yield cp, rgrpc.RunServiceStub(ch)
    finally:
        await cp.stop(grace=0.2)


def job(request_id: str = "") -> rpb.CreateRunRequest:
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j")))
    return rpb.CreateRunRequest(run=run, request_id=request_id)


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_failed_and_finished_watches_leave_nothing(plane) -> None:
    cp, stub = plane
    for run_id in range(1000, 1200):  # 200 watches of runs that do not exist
        err = await refused(stub.WatchRun(rpb.WatchRunRequest(run_id=run_id)).read())
        assert err.code() == grpc.StatusCode.NOT_FOUND
    assert cp.orchestrator.watch_state() == (0, 0)
    run = (await stub.CreateRun(job())).run
    await stub.CancelRun(rpb.CancelRunRequest(run_id=run.id))
    seen = [m.run.status async for m in stub.WatchRun(rpb.WatchRunRequest(run_id=run.id))]
    assert seen == [rpb.RUN_STATUS_CANCELED]  # a finished run: once, then the end
    pending = (await stub.CreateRun(job())).run
    watch = stub.WatchRun(rpb.WatchRunRequest(run_id=pending.id))
    await watch.read()  # now waiting for a change
    # (A change may land meanwhile, the scheduler saying why the run waits:
    # the watch then reads again and waits anew.)
    await until(lambda: cp.orchestrator.watch_state() == (1, 1), 5, "the watch to wait")
    watch.cancel()  # the caller goes away

    for _ in range(500):  # the cancel reaches the server soon (at most 5 s)
        if cp.orchestrator.watch_state() == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert cp.orchestrator.watch_state() == (0, 0)


async def test_streams_are_capped_in_all_and_per_run(plane) -> None:
    _, stub = plane
    runs = [(await stub.CreateRun(job())).run.id for _ in range(3)]
    first = [stub.WatchRun(rpb.WatchRunRequest(run_id=runs[0])) for _ in range(2)]
    for watch in first:
        await watch.read()
    err = await refused(stub.WatchRun(rpb.WatchRunRequest(run_id=runs[0])).read())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == (
        f"run {runs[0]} has 2 watch and log streams open, the limit per run "
        "(--max-watchers-per-run 2); close some or try again later"
    )
    logs = stub.GetRunLogs(rpb.GetRunLogsRequest(run_id=runs[1], follow=True))
    await logs.read()  # log follows count too
    second = stub.WatchRun(rpb.WatchRunRequest(run_id=runs[1]))
    await second.read()
    err = await refused(stub.WatchRun(rpb.WatchRunRequest(run_id=runs[2])).read())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "(--max-streams 4)" in err.details()
    first[0].cancel()

    async def room() -> rpb.WatchRunResponse:
        while True:
            try:
                return await stub.WatchRun(rpb.WatchRunRequest(run_id=runs[2])).read()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.02)

    assert (await asyncio.wait_for(room(), 5)).run.id == runs[2]
    for call in (first[1], logs, second):
        call.cancel()


async def test_pending_runs_are_capped(plane) -> None:
    _, stub = plane
    made = [(await stub.CreateRun(job(f"pending-run-{i:012d}"))).run.id for i in range(3)]
    err = await refused(stub.CreateRun(job()))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == (
        "3 runs are already Pending, the limit (--max-pending-runs 3); wait for some to start, "
        "cancel some (`muster run list --status Pending`), or restart the control plane with a "
        "higher --max-pending-runs"
    )
    # A retry of a request that made a run still answers with its run.
    assert (await stub.CreateRun(job("pending-run-000000000001"))).run.id == made[1]
    await stub.CancelRun(rpb.CancelRunRequest(run_id=made[0]))
    assert (await stub.CreateRun(job())).run.status == rpb.RUN_STATUS_PENDING


def spec(i: int) -> ContainerSpec:
    return ContainerSpec(i, "job", 0, f"c{i}", f"h{i}", "img")


def test_an_agents_queue_is_bounded_and_overflow_closes_it() -> None:
    link = GrpcAgentLink("n1", max_queued=3)
    for i in range(3):
        link.start(spec(i))
    assert link.qsize() == 3 and not link.closed
    link.start(spec(3))  # one too many: the backlog goes, the stream ends
    assert link.closed and link.qsize() == 1 and link.take_nowait() is _CLOSE
    link.teardown(9)  # nothing more is queued on a closing link
    link.close()
    assert link.qsize() == 0


async def test_a_huge_tail_is_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    from controlplane.core.logs import LogLine
    from controlplane.services.codespecs import CodespecService
    from controlplane.services.logs import CHUNK, LogService
    from controlplane.services.orchestrator import Orchestrator
    from controlplane.store.sqlite import SqliteStore
    from tests.controlplane.test_runs_state import make_run

    store = await SqliteStore.open(tmp_path / "db")
    try:
        run = await store.insert_run(make_run())
        await store.append_logs(
            [LogLine(run.id, "job", 0, "stdout", i, i + 1, f"line {i}") for i in range(2500)]
        )
        asked: list[int] = []
        read_logs = store.read_logs

        async def recording(run_id: int, **query):  # type: ignore[no-untyped-def]
            asked.append(query["limit"])
            return await read_logs(run_id, **query)

        store.read_logs = recording  # type: ignore[method-assign]
        logs = LogService(store, Orchestrator(store, CodespecService(store)))

        async def tail(count: int, since_ns: int | None = None) -> list[int]:
            reading = logs.read(run.id, follow=False, since_ns=since_ns, tail=count)
            return [s.line.sequence async for chunk, _ in reading for s in chunk]

        assert await tail(2**31 - 1) == list(range(2500))
        assert asked and max(asked) <= CHUNK  # never the whole tail at once
        assert await tail(3) == [2497, 2498, 2499]
        assert await tail(1500) == list(range(1000, 2500))
        assert await tail(5, since_ns=2499) == [2498, 2499]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"labels": {"big": "x" * 3_000_000}}, "labels.big"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"pools": [f"p{i}" for i in range(33)]}, "pools"),
        ({"pools": ["Not A Pool"]}, "pools"),
        ({"node_name": "-bad"}, "node_name"),
        ({"advertise_address": "a" * 300}, "advertise_address"),
        ({"gpu_devices": ["nvidia.com/gpu=" + "0" * 300]}, "gpu_devices"),
        ({"network_mode": 3}, "network_mode"),
    ],
)
async def test_an_oversized_or_malformed_registration_is_refused(plane, change, field) -> None:
    cp, _ = plane
    register = apb.Register(**{"node_name": "n1", "pools": ["cpu"], **change})

    async def requests() -> AsyncIterator[apb.ConnectRequest]:
        yield apb.ConnectRequest(register=register)
        await asyncio.Event().wait()  # the server ends the stream

    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}", options=options) as ch:
        call = agrpc.AgentServiceStub(ch).Connect(requests())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
        nodes = await ngrpc.NodeServiceStub(ch).ListNodes(npb.ListNodesRequest())
        assert [n.name for n in nodes.nodes] == [], "a refused registration left a node"
