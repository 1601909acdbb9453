"""A store whose writes fail for a while (the real SQLite store behind a
fault-injecting wrapper), under a real control plane and real agents on the
fake runtime: callers get UNAVAILABLE, memory never runs ahead of the store,
nothing is sent for a change that was not stored, and once writes work again
everything that was pending happens (nothing lost, nothing started twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.core.errors import StoreUnavailable
from controlplane.server import ControlPlane, start
from controlplane.store.sqlite import SqliteStore
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    SETTINGS,
    Fleet,
    container_of,
    create_run,
    get_run,
    setup_codespecs,
    until,
)

WRITES = frozenset(
    {
        "insert_run",
        "save_run",
        "save_runs",
        "save_node",
        "delete_node",
        "append_logs",
        "insert_codespec",
        "forget_requests",
    }
)


class FlakyStore:
    """The real store; while `failing`, every write raises StoreUnavailable (as
    a full disk or an I/O error would) and changes nothing."""

    def __init__(self, inner: SqliteStore) -> None:
        self._inner = inner
        self.failing = False
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITES:
            return attr

        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.failing:
                self.refused += 1
                raise StoreUnavailable("OperationalError: disk I/O error (injected)")
            return await attr(*args, **kwargs)

        return write


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, FlakyStore, Fleet, str]]:
    address = f"127.0.0.1:{free_port()}"
    store = FlakyStore(await SqliteStore.open(tmp_path / "cp.db"))
    plane = await start(address, tmp_path / "cp.db", SETTINGS, store=store)  # type: ignore[arg-type]
    fleet = Fleet(address)
    try:
        yield plane, store, fleet, address
    finally:
        store.failing = False
        await fleet.close()
        await plane.stop(grace=0.2)


def replicas_on(plane: ControlPlane) -> dict[str, int]:
    """Replicas of active runs per node, as the control plane holds them in memory."""
    return {node.name: count for node, _, count in plane.orchestrator.nodes()}


async def still(check: Callable[[], object], seconds: float) -> None:
    """`check()` holds throughout `seconds` (re-checked every 50 ms)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert check()
        await asyncio.sleep(0.05)


async def test_a_report_that_cannot_be_stored_is_not_lost(flaky) -> None:
    plane, store, fleet, address = flaky
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await setup_codespecs(address)
    run_id = await create_run(address, workers=2)
    run = await get_run(address, run_id)
    job = container_of(run, "job")
    await until(lambda: job in cpu.containers, 10, "the job to be released")
    creates = (cpu.create_count, gpu.create_count)

    store.failing = True
    cpu.exit(job, 0)  # its report cannot be stored
    await until(lambda: store.refused > 0, 10, "a refused write")
    # Nothing moved on: the run is Running in the store and in memory, and no
    # teardown went out for a Succeeded that was never stored.
    await still(
        lambda: replicas_on(plane) == {"n-cpu": 1, "n-gpu": 2} and len(gpu.containers) == 2, 1.0
    )
    assert (await get_run(address, run_id)).status == rpb.RUN_STATUS_RUNNING
    async with grpc.aio.insecure_channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rgrpc.RunServiceStub(ch).CancelRun(rpb.CancelRunRequest(run_id=run_id))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "store is unavailable" in (err.value.details() or "")
    assert (await get_run(address, run_id)).status == rpb.RUN_STATUS_RUNNING

    store.failing = False  # the agent's stream ended; it re-registers with the job exited

    async def succeeded() -> bool:
        return (await get_run(address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 15, "Succeeded once writes work again")
    await until(lambda: not gpu.containers and not cpu.containers, 10, "teardown")
    assert (cpu.create_count, gpu.create_count) == creates  # nothing started twice
    assert replicas_on(plane) == {"n-cpu": 0, "n-gpu": 0}


async def test_a_deadline_that_cannot_be_stored_is_retried(flaky) -> None:
    plane, store, fleet, address = flaky
    cpu = fleet.add("n-cpu", "cpu")
    await setup_codespecs(address)
    message = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        timeout_seconds=2,
    )
    async with grpc.aio.insecure_channel(address) as ch:
        stub = rgrpc.RunServiceStub(ch)
        run = (await stub.CreateRun(rpb.CreateRunRequest(run=message))).run
        job = container_of(run, "job")
        await until(lambda: job in cpu.containers, 10, "the job to start")
        store.failing = True
        # A create meanwhile is UNAVAILABLE; retried with its id later, it makes one run.
        again = rpb.CreateRunRequest(run=message, request_id="retry-0123456789abcdef")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateRun(again)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # The timeout passes; failing the run cannot be stored, so nothing is torn down.
        await until(lambda: store.refused > 1, 10, "the timeout's write to be refused")
        await still(lambda: job in cpu.containers and replicas_on(plane)["n-cpu"] == 1, 1.5)
        assert (await get_run(address, run.id)).status == rpb.RUN_STATUS_RUNNING

        store.failing = False

        async def timed_out() -> bool:
            return (await get_run(address, run.id)).status == rpb.RUN_STATUS_FAILED

        await until(timed_out, 10, "the timeout, once writes work again")
        await until(lambda: job not in cpu.containers, 10, "the teardown")
        first = (await stub.CreateRun(again)).run
        assert (await stub.CreateRun(again)).run.id == first.id
        listed = await stub.ListRuns(rpb.ListRunsRequest())
        assert sorted(r.id for r in listed.runs) == [run.id, first.id]
