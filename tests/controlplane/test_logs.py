"""Log storage (every backend) and the log service's reads and follows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.core.codespec import Codespec
from controlplane.core.logs import LogLine
from controlplane.core.runs import Target, new_run
from controlplane.services.codespecs import CodespecService
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    s = await SqliteStore.open(tmp_path / "db") if request.param == "sqlite" else MemoryStore()
    yield s
    await s.close()


async def make_run(store) -> int:
    run = new_run(
        0,
        Target(Codespec(name="j", image="i"), "j"),
        Target(Codespec(name="w", image="i", kind="worker"), "w", replicas=2),
        T0,
    )
    return (await store.insert_run(run)).id


def line(run_id: int, role: str, replica: int, seq: int, ts: int, stream: str = "stdout"):
    return LogLine(run_id, role, replica, stream, seq, ts, f"{role}{replica}-{stream}-{seq}")


async def test_dedup_order_tail_since(store) -> None:
    run_id = await make_run(store)
    batch = [
        line(run_id, "worker", 1, 0, 30),
        line(run_id, "job", 0, 0, 10),
        line(run_id, "worker", 0, 0, 20),
        line(run_id, "job", 0, 1, 40),
        line(run_id, "job", 0, 0, 5, "stderr"),
    ]
    assert await store.append_logs(batch) == 5
    assert await store.append_logs(batch[:2]) == 0  # resent lines are ignored
    assert await store.append_logs([line(999, "job", 0, 0, 1)]) == 0  # unknown run
    texts = [
        s.line.text
        for s in await store.read_logs(run_id, since_ns=None, max_id=None, after=None, limit=100)
    ]
    assert texts == [
        "job0-stderr-0",
        "job0-stdout-0",
        "worker0-stdout-0",
        "worker1-stdout-0",
        "job0-stdout-1",
    ]
    page = await store.read_logs(run_id, since_ns=None, max_id=None, after=None, limit=2)
    last = page[-1].line
    rest = await store.read_logs(
        run_id,
        since_ns=None,
        max_id=None,
        limit=10,
        after=(last.time_ns, page[-1].id),
    )
    assert [s.line.text for s in page + rest] == texts
    tail = await store.tail_logs(run_id, count=2, since_ns=None, max_id=None)
    assert [s.line.text for s in tail] == texts[-2:]
    since = await store.read_logs(run_id, since_ns=20, max_id=None, after=None, limit=10)
    assert [s.line.text for s in since] == texts[2:]
    newest = await store.last_log_id(run_id)
    await store.append_logs([line(run_id, "job", 0, 2, 1)])
    arrived = await store.new_logs(run_id, after_id=newest, limit=10)
    assert [s.line.text for s in arrived] == ["job0-stdout-2"]


async def test_follow_gets_new_lines_and_ends_when_logs_complete(tmp_path: Path) -> None:
    store = MemoryStore()
    codespecs = CodespecService(store)
    orch = Orchestrator(store, codespecs)
    logs = LogService(store, orch)
    run = new_run(0, Target(Codespec(name="j", image="i"), "j"), None, T0)
    run = await store.insert_run(run)
    await orch.load()  # the stored run is active: the orchestrator takes it in
    await logs.ingest([line(run.id, "job", 0, 0, 1)])

    received: list[str] = []
    resumes: list[int] = []
    two = asyncio.Event()

    async def reader() -> None:
        async for chunk, resume in logs.read(run.id, follow=True, since_ns=None, tail=0):
            received.extend(s.line.text for s in chunk)
            resumes.append(resume)
            if len(received) >= 2:
                two.set()

    task = asyncio.create_task(reader())
    await logs.ingest([line(run.id, "job", 0, 1, 2)])
    await asyncio.wait_for(two.wait(), 5)
    assert not task.done()  # the run has not ended: still following
    await orch.cancel_run(run.id)  # it ends (no container ran): the follow may complete
    await logs.ingest([line(run.id, "job", 0, 2, 3)])
    async with asyncio.timeout(5):
        await task
    assert received == ["job0-stdout-0", "job0-stdout-1", "job0-stdout-2"]
    assert resumes[0] == 0 and resumes[-1] == await store.last_log_id(run.id)
    # a follow resumed from a mid-way point gets exactly the lines after it
    resumed = [
        s.line.text
        async for chunk, _ in logs.read(
            run.id, follow=True, since_ns=None, tail=0, resume_after=resumes[1]
        )
        for s in chunk
    ]
    after = await store.new_logs(run.id, after_id=resumes[1], limit=100)
    assert resumed == [s.line.text for s in after] and resumed[-1] == "job0-stdout-2"
    assert logs._arrived == {}  # ended follows leave no per-run entry behind
