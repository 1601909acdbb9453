"""The Store contract for run logs, on every backend (store_contract_support.py)."""

from __future__ import annotations

from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import run_at

store = store_contract_support.store  # the fixture: one parameter per backend


def log_line(run_id: int, role: str, replica: int, seq: int, ts: int, **kw):
    from controlplane.core.logs import LogLine

    text = kw.pop("text", f"{role}{replica}-{seq}")
    return LogLine(run_id, role, replica, kw.pop("stream", "stdout"), seq, ts, text, **kw)


async def test_logs_are_kept_once_in_time_order_with_their_arrival_ids(store) -> None:
    run = await store.insert_run(run_at(0))
    other = await store.insert_run(run_at(0))
    batch = [
        log_line(run.id, "worker", 1, 0, 30),
        log_line(run.id, "job", 0, 0, 10),
        log_line(run.id, "worker", 0, 0, 20),
        log_line(run.id, "job", 0, 1, 10),  # same time as job0-0: arrival breaks the tie
        log_line(run.id, "job", 0, 0, 5, stream="stderr", text="err"),
    ]
    assert await store.last_log_id(run.id) == 0
    assert await store.append_logs(batch) == 5
    assert await store.append_logs([*batch[:2], log_line(other.id, "job", 0, 0, 1)]) == 1
    assert await store.append_logs([log_line(run.id + 999, "job", 0, 0, 1)]) == 0
    assert await store.append_logs([]) == 0

    def read(**kw):
        args = {"since_ns": None, "max_id": None, "after": None, "limit": 100, **kw}
        return store.read_logs(run.id, **args)

    everything = await read()
    assert [s.line.text for s in everything] == [
        "err",
        "job0-0",
        "job0-1",
        "worker0-0",
        "worker1-0",
    ]
    by_arrival = sorted(everything, key=lambda s: s.id)
    assert [s.line.text for s in by_arrival] == [ln.text for ln in batch]
    newest = await store.last_log_id(run.id)
    assert newest == by_arrival[-1].id
    assert await store.last_log_id(other.id) > newest  # ids are global and only grow

    first = await read(limit=2)
    rest = await read(after=(first[-1].line.time_ns, first[-1].id))
    assert first + rest == everything
    assert [s.line.text for s in await read(since_ns=20)] == ["worker0-0", "worker1-0"]
    assert [s.line.text for s in await read(max_id=by_arrival[1].id)] == ["job0-0", "worker1-0"]
    assert everything[0].line == batch[4]  # every field comes back


async def test_tails_and_follows(store) -> None:
    run = await store.insert_run(run_at(0))
    await store.append_logs([log_line(run.id, "job", 0, i, 100 + 10 * i) for i in range(6)])

    def tail(count: int, **kw):
        args = {"since_ns": None, "max_id": None, **kw}
        return store.tail_logs(run.id, count=count, **args)

    def start(count: int, **kw):
        args = {"since_ns": None, "max_id": None, **kw}
        return store.tail_start(run.id, count=count, **args)

    assert [s.line.sequence for s in await tail(2)] == [4, 5]
    assert [s.line.sequence for s in await tail(100)] == list(range(6))
    assert await tail(0) == []
    lines = await tail(100)
    assert await start(2) == (lines[4].line.time_ns, lines[4].id)
    assert await start(100) == (lines[0].line.time_ns, lines[0].id)  # fewer than asked
    assert await start(2, max_id=lines[2].id) == (lines[1].line.time_ns, lines[1].id)
    assert [s.line.sequence for s in await tail(3, since_ns=140)] == [4, 5]
    assert await start(1, since_ns=1000) is None
    empty = await store.insert_run(run_at(0))
    assert await store.tail_start(empty.id, count=5, since_ns=None, max_id=None) is None

    mark = await store.last_log_id(run.id)
    await store.append_logs([log_line(run.id, "job", 0, i, 1) for i in range(6, 9)])
    arrived = await store.new_logs(run.id, after_id=mark, limit=2)
    assert [s.line.sequence for s in arrived] == [6, 7]  # arrival order, not time
    arrived += await store.new_logs(run.id, after_id=arrived[-1].id, limit=10)
    assert [s.line.sequence for s in arrived] == [6, 7, 8]
    assert await store.new_logs(run.id, after_id=arrived[-1].id, limit=10) == []


async def test_any_line_text_comes_back_as_it_went_in(store) -> None:
    """Container output is not always text: NUL, control characters, any
    Unicode and parts of long lines (partial) are stored as they came."""
    run = await store.insert_run(run_at(0))
    texts = ["nul\x00byte", "tab\tbell\x07", "héllo wörld ✓ 🚀", "", "x" * 70_000]
    lines = [log_line(run.id, "job", 0, i, i, text=t) for i, t in enumerate(texts)]
    lines.append(log_line(run.id, "job", 0, 9, 9, text="part one ", partial=True))
    assert await store.append_logs(lines) == len(lines)
    back = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=10)
    assert [s.line for s in back] == lines
    size = sum(len(t.encode()) for t in texts) + len(b"part one ")
    assert await store.log_usage(run.id) == (size, 0)


async def test_a_follower_by_arrival_id_misses_no_line_while_writers_race(store) -> None:
    """Lines of one run written by concurrent callers: a reader that asks for
    what arrived after the last id it saw ends up with every line once."""
    import asyncio

    run = await store.insert_run(run_at(0))
    writers, batches, size = 4, 10, 5
    done = asyncio.Event()

    async def write(writer: int) -> None:
        for b in range(batches):
            start = (writer * batches + b) * size
            await store.append_logs(
                [log_line(run.id, "worker", writer, start + i, start + i) for i in range(size)]
            )

    async def follow() -> list[int]:
        seen: list[int] = []
        after = 0
        while True:
            finished = done.is_set()
            chunk = await store.new_logs(run.id, after_id=after, limit=7)
            seen += [s.line.sequence for s in chunk]
            after = chunk[-1].id if chunk else after
            if finished and not chunk:
                return seen
            await asyncio.sleep(0)

    follower = asyncio.create_task(follow())
    await asyncio.gather(*(write(w) for w in range(writers)))
    done.set()
    seen = await follower
    assert sorted(seen) == list(range(writers * batches * size))
