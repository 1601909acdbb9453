"""Parts of long lines in the store and in replies; replies cut by size."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.core.logs import LogLine, StoredLine
from controlplane.services.codespecs import CodespecService
from controlplane.services.logs import LogService, sized
from controlplane.services.orchestrator import Orchestrator
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from muster.common.limits import LOG_BATCH_BYTES
from muster.v1 import run_pb2
from muster_cli.logs import LogPrinter
from tests.controlplane.test_logs import make_run

PART = 64 * 1024


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    s = await SqliteStore.open(tmp_path / "db") if request.param == "sqlite" else MemoryStore()
    yield s
    await s.close()


def parts(run_id: int, text: str, first_seq: int = 0, ts: int = 100) -> list[LogLine]:
    pieces = [text[i : i + PART] for i in range(0, len(text), PART)]
    return [
        LogLine(run_id, "job", 0, "stdout", first_seq + i, ts, p, i < len(pieces) - 1)
        for i, p in enumerate(pieces)
    ]


async def test_parts_are_stored_with_their_flag_and_replies_stay_under_a_mebibyte(store) -> None:
    run_id = await make_run(store)
    long = "x" * (5 * 2**20 + 7)
    lines = [*parts(run_id, long), *parts(run_id, "after", first_seq=81, ts=200)]
    assert len(lines) == 82
    assert await store.append_logs(lines) == 82
    assert await store.append_logs(lines[:3]) == 0  # resent parts are ignored
    service = LogService(store, Orchestrator(store, CodespecService(store)))
    replies = [
        batch
        async for batch in service.read(run_id, follow=False, since_ns=None, tail=0, resume_after=0)
    ]
    got = [s.line for chunk, _ in replies for s in chunk]
    assert got == lines
    assert len(replies) >= 5
    assert all(
        sum(len(s.line.text) for s in chunk) <= LOG_BATCH_BYTES + PART for chunk, _ in replies
    )


def test_sized_cuts_batches_by_text_and_keeps_small_ones_whole() -> None:
    def stored(i: int, size: int) -> StoredLine:
        return StoredLine(i, LogLine(1, "job", 0, "stdout", i, 0, "é" * size))

    small = [stored(i, 10) for i in range(1000)]
    assert sized(small) == [small]
    assert sized([]) == [[]]
    big = [stored(i, PART // 2) for i in range(100)]  # 64 KiB of UTF-8 each
    batches = sized(big)
    assert [s for b in batches for s in b] == big
    assert len(batches) == 7 and all(len(b) <= 16 for b in batches)


def pb_line(text: str, seq: int, partial: bool, source: str = "job") -> run_pb2.LogLine:
    return run_pb2.LogLine(
        time=Timestamp(seconds=1_795_626_489, nanos=5),
        source=source,
        stream=run_pb2.LOG_STREAM_STDOUT,
        text=text,
        sequence=seq,
        partial=partial,
    )


def test_the_cli_joins_parts_of_a_source_and_stream_into_one_line() -> None:
    out = io.StringIO()
    printer = LogPrinter(prefixed=True, timestamps=True, out=out)
    printer.emit(pb_line("hel", 0, True))
    printer.emit(pb_line("worker says hi", 0, False, source="worker-0"))  # printed meanwhile
    printer.emit(pb_line("hel", 0, True))  # a repeat after a reconnect is skipped
    printer.emit(pb_line("lo ", 1, True))
    printer.emit(pb_line("world", 2, False))
    printer.emit(pb_line("cut off", 3, True))
    printer.flush()  # lines are written a reply at a time
    assert out.getvalue().splitlines() == [
        "2026-11-25T17:08:09.000000005Z [worker-0] worker says hi",
        "2026-11-25T17:08:09.000000005Z [job] hello world",
    ]
    printer.close()  # a line whose last part never came is printed as it is
    assert out.getvalue().splitlines()[-1] == "2026-11-25T17:08:09.000000005Z [job] cut off"
