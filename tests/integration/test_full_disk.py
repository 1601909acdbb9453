"""A real full disk under the database: the SQLite file lives on a tiny tmpfs
that the test fills to the last byte. Writes are refused with UNAVAILABLE while
it is full (the control plane keeps serving reads and stays up), nothing a
client was told is stored goes missing, and everything resumes once space is
back: the refused report is applied, the teardown goes out, new runs work."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.server import ControlPlane, start
from controlplane.store.sqlite import SqliteStore
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    SETTINGS,
    Fleet,
    container_of,
    get_run,
    setup_codespecs,
    until,
)
from tests.integration.test_store_faults import still

DISK_BYTES = 8 * 1024 * 1024


def _mount_tmpfs(where: Path) -> None:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root to mount a tmpfs (CI runs as root)")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(where)],
        check=True,
    )


def _fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES, unmounted after the test even if it fails."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


@pytest.fixture
async def on_small_disk(small_disk: Path) -> AsyncIterator[tuple[ControlPlane, Fleet, str, Path]]:
    disk = small_disk
    address = f"127.0.0.1:{free_port()}"
    fleet: Fleet | None = None
    plane: ControlPlane | None = None
    try:
        store = await SqliteStore.open(disk / "cp.db")
        plane = await start(address, disk / "cp.db", SETTINGS, store=store)
        fleet = Fleet(address)
        yield plane, fleet, address, disk
    finally:
        with contextlib.suppress(FileNotFoundError):
            (disk / "filler").unlink()
        if fleet is not None:
            await fleet.close()
        if plane is not None:
            await plane.stop(grace=0.2)


def _job(workers: int = 0) -> rpb.Run:
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"))
    if workers:
        run.worker.codespec.named = "w"
        run.worker.node_pool = "cpu"
        run.worker.replicas = workers
    return run


async def test_a_full_disk_refuses_writes_and_loses_nothing(on_small_disk) -> None:
    _, fleet, address, disk = on_small_disk
    cpu = fleet.add("n-cpu", "cpu")
    await setup_codespecs(address)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = rgrpc.RunServiceStub(ch)
        run = (await stub.CreateRun(rpb.CreateRunRequest(run=_job()))).run
        job = container_of(run, "job")
        await until(lambda: job in cpu.containers, 10, "the job to start")

        filler = _fill(disk)
        # Creates until the store refuses one (SQLite may still have room in
        # pages it holds): every create either is stored or says UNAVAILABLE.
        stored: list[int] = []
        refused = None
        for _ in range(500):
            try:
                reply = await stub.CreateRun(rpb.CreateRunRequest(run=_job()))
            except grpc.aio.AioRpcError as exc:
                refused = exc
                break
            stored.append(reply.run.id)
        assert refused is not None, "a full disk never refused a write"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert "store is unavailable" in (refused.details() or "")
        # Reads still work, and the report of the job's exit is refused too.
        assert (await get_run(address, run.id)).status == rpb.RUN_STATUS_RUNNING
        cpu.exit(job, 0)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.CreateRun(rpb.CreateRunRequest(run=_job()))
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
        # No teardown goes out for a Succeeded that was never stored.
        await still(lambda: job in cpu.containers, 1.5)
        assert (await get_run(address, run.id)).status == rpb.RUN_STATUS_RUNNING

        filler.unlink()  # space is back

        async def succeeded() -> bool:
            return (await get_run(address, run.id)).status == rpb.RUN_STATUS_SUCCEEDED

        await until(succeeded, 20, "the refused report to be applied once space is back")
        await until(lambda: job not in cpu.containers, 10, "the teardown")
        fresh = (await stub.CreateRun(rpb.CreateRunRequest(run=_job()))).run
        listed = await stub.ListRuns(rpb.ListRunsRequest(page_size=1000))
        ids = {r.id for r in listed.runs}
        assert {run.id, *stored, fresh.id} <= ids, "a run the client was told is stored is gone"
        assert len(ids) == len(stored) + 2, "a refused create left a run behind"
