"""Retention: finished runs (with logs, tags and request ids) go after
--retain-finished, in batches, and the file shrinks; a run's logs are capped
at --max-log-bytes-per-run, oldest lines first, with one marker line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.core import runs as lifecycle
from controlplane.core.logs import LogLine
from controlplane.server import start
from controlplane.services.orchestrator import Settings
from controlplane.services.retention import Retention, RetentionSettings, human_bytes
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.controlplane.test_runs_state import make_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    s = (
        await SqliteStore.open(tmp_path / "db.sqlite")
        if request.param == "sqlite"
        else MemoryStore()
    )
    yield s
    await s.close()


async def finished(store, at: datetime, log_lines: int = 10, request_id: str = "") -> int:
    run = await store.insert_run(make_run(), request_id)
    lifecycle.cancel(run, at)
    await store.save_run(run)
    await store.append_logs(
        [LogLine(run.id, "job", 0, "stdout", i, i + 1, "y" * 100) for i in range(log_lines)]
    )
    return run.id


def test_sizes_read_as_people_write_them() -> None:
    assert [human_bytes(n) for n in (0, 512, 8192, 1536, 1024**3)] == [
        "0B",
        "512B",
        "8KiB",
        "1.5KiB",
        "1GiB",
    ]


async def test_a_sweep_deletes_what_is_past_retention_and_nothing_else(store) -> None:
    clock = Clock()
    retention = Retention(store, RetentionSettings(retain_finished=timedelta(hours=1)), clock)
    early = await finished(store, T0, log_lines=12_000, request_id="early-0123456789abcdef")
    late = await finished(store, T0 + timedelta(minutes=50))
    active = (await store.insert_run(make_run())).id
    clock.now = T0 + timedelta(minutes=70)
    done = await retention.sweep()
    assert (done.runs, done.log_lines) == (1, 12_000)
    assert await store.get_run(early) is None
    assert await store.get_run(late) is not None and await store.get_run(active) is not None
    assert await store.run_for_request("early-0123456789abcdef", T0) is None
    clock.now = T0 + timedelta(days=3)
    assert (await retention.sweep()).runs == 1  # the late one; never the active one
    assert await store.get_run(active) is not None


async def test_retention_zero_keeps_runs_forever(store) -> None:
    clock = Clock()
    retention = Retention(store, RetentionSettings(retain_finished=None), clock)
    run_id = await finished(store, T0)
    clock.now = T0 + timedelta(days=3650)
    assert (await retention.sweep()).runs == 0
    assert await store.get_run(run_id) is not None


async def test_logs_over_the_cap_lose_their_oldest_lines(store) -> None:
    retention = Retention(store, RetentionSettings(max_log_bytes=8192), Clock())
    big = (await store.insert_run(make_run())).id
    await store.append_logs(
        [LogLine(big, "job", 0, "stdout", i, i + 1, "z" * 100) for i in range(300)]
    )
    small = await finished(store, T0, log_lines=5)
    assert await retention.cap_logs() == 221
    size, dropped = await store.log_usage(big)
    assert size <= 8192 and dropped == 221
    first = (await store.read_logs(big, since_ns=None, max_id=None, after=None, limit=1))[0]
    assert first.line.text == (
        "[muster] 221 earlier log lines of this run were dropped: its logs exceeded "
        "--max-log-bytes-per-run (8KiB)"
    )
    assert await store.log_usage(small) == (500, 0)
    assert await retention.cap_logs() == 0


async def test_the_file_shrinks_after_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = await SqliteStore.open(path)
    try:
        clock = Clock()
        retention = Retention(store, RetentionSettings(retain_finished=timedelta(hours=1)), clock)
        for _ in range(4):
            await finished(store, T0, log_lines=5000)
        grown = path.stat().st_size
        clock.now = T0 + timedelta(hours=2)
        done = await retention.sweep()
        assert done.runs == 4 and done.pages > 0
        assert path.stat().st_size < grown / 2
    finally:
        await store.close()


async def test_over_grpc_a_run_past_retention_is_gone(tmp_path: Path) -> None:
    clock = Clock()
    settings = Settings(retain_finished=timedelta(hours=1))
    plane = await start("127.0.0.1:0", tmp_path / "cp.db", settings, clock=clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            await cgrpc.CodespecServiceStub(ch).CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
            )
            stub = rgrpc.RunServiceStub(ch)
            run = rpb.Run(
                job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j")), tags={"k": "v"}
            )
            created = (await stub.CreateRun(rpb.CreateRunRequest(run=run))).run
            await stub.CancelRun(rpb.CancelRunRequest(run_id=created.id))
            assert plane.retention is not None
            assert (await plane.retention.sweep()).runs == 0
            clock.now += timedelta(hours=1, minutes=1)
            assert (await plane.retention.sweep()).runs == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetRun(rpb.GetRunRequest(run_id=created.id))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            counted = await stub.CountRuns(rpb.CountRunsRequest(tags={"k": "v"}))
            assert counted.total == 0
    finally:
        await plane.stop(grace=0.2)
