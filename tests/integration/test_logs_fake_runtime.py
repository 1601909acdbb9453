"""Logs through a real control plane and real agents (fake runtime), over real
gRPC: a 5 MB line comes back in parts through GetRunLogs, and a log flood into
a slow store never makes the node NotReady nor holds up another run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.core.nodes import Liveness
from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings
from muster.common.limits import LOG_BATCH_BYTES, LOG_PART_BYTES
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    Fleet,
    container_of,
    get_run,
    setup_codespecs,
    until,
)

# NotReady after 3 s without a heartbeat (sent every second).
SETTINGS = Settings(
    heartbeat_interval=timedelta(seconds=1),
    liveness=Liveness(not_ready=timedelta(seconds=3), lost=timedelta(seconds=30)),
)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Fleet, str]]:
    address = f"127.0.0.1:{free_port()}"
    cp = await start(address, tmp_path / "cp.db", SETTINGS)
    fleet = Fleet(address)
    try:
        yield cp, fleet, address
    finally:
        await fleet.close()
        await cp.stop(grace=0.2)


async def job_run(address: str) -> int:
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"))
    async with grpc.aio.insecure_channel(address) as ch:
        return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=run))).run.id


async def started_job(address: str, fleet: Fleet, node: str) -> tuple[int, str]:
    run_id = await job_run(address)
    name = container_of(await get_run(address, run_id), "job")
    await until(lambda: name in fleet.runtimes[node].containers, 10, f"run {run_id}'s job")
    return run_id, name


async def succeeded(address: str, run_id: int) -> bool:
    return (await get_run(address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED


async def read_logs(address: str, run_id: int) -> list[rpb.GetRunLogsResponse]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = rgrpc.RunServiceStub(ch)
        return [r async for r in stub.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id))]


async def test_a_5mb_line_is_stored_and_served_in_parts(plane) -> None:
    _, fleet, address = plane
    runtime = fleet.add("n1", "cpu")
    await setup_codespecs(address)
    run_id, job = await started_job(address, fleet, "n1")
    huge = "".join(f"{i:07d}" for i in range(750_000))  # 5.25 MB, no newline in it
    runtime.write_log(job, "stdout", "before\n" + huge + "\nafter\n")
    runtime.exit(job, 0)
    await until(lambda: succeeded(address, run_id), 10, "Succeeded")
    await until(lambda: not runtime.containers, 10, "the job removed (logs complete)")
    replies = await read_logs(address, run_id)
    lines = [line for r in replies for line in r.lines]
    assert max(r.ByteSize() for r in replies) < LOG_BATCH_BYTES + 2 * LOG_PART_BYTES
    assert max(len(line.text) for line in lines) <= LOG_PART_BYTES
    assert [line.sequence for line in lines] == list(range(len(lines)))
    assert [line.partial for line in lines] == [False] + [True] * (len(lines) - 3) + [False] * 2
    assert lines[0].text == "before" and lines[-1].text == "after"
    assert "".join(line.text for line in lines[1:-1]) == huge


async def test_a_log_flood_into_a_slow_store_leaves_the_node_ready_and_other_runs_going(
    plane,
) -> None:
    cp, fleet, address = plane
    store = cp.store
    real_append = store.append_logs

    async def slow_append(lines):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.4)  # every batch takes a while to store
        return await real_append(lines)

    store.append_logs = slow_append  # type: ignore[method-assign]
    runtime = fleet.add("n1", "cpu")
    await setup_codespecs(address)
    flood_run, flood = await started_job(address, fleet, "n1")
    total = 40_000  # 40 MB of lines of 1 KB: about 100 s of storing at 0.4 s per batch
    runtime.write_log(flood, "stdout", "".join(f"{i:0999d}\n" for i in range(total)))

    statuses: list[int] = []

    async def watch_node() -> None:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = ngrpc.NodeServiceStub(ch)
            while True:
                nodes = (await stub.ListNodes(npb.ListNodesRequest())).nodes
                statuses.extend(n.status for n in nodes if n.name == "n1")
                await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_node())
    try:
        await asyncio.sleep(5)  # longer than NotReady's 3 s: heartbeats must get through
        began = time.monotonic()
        second, job = await started_job(address, fleet, "n1")
        runtime.exit(job, 0)
        await until(lambda: succeeded(address, second), 10, "the second run to succeed")
        took = time.monotonic() - began
    finally:
        watcher.cancel()
    stored = await store.last_log_id(flood_run)
    print(f"\nslow store: second run done in {took:.2f}s; {stored:,} of {total:,} lines stored")
    assert statuses and set(statuses) == {npb.NODE_STATUS_READY}
    assert stored < total, "the flood was still being stored"
    assert took < 5
