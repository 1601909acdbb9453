"""Soak benchmark: the database's size over many run cycles with a short retention.

    .venv/bin/python benchmarks/bench_retention.py [--cycles 12] [--runs 50] [--lines 2000]
        [--retain 3] [--max-log-bytes 0]

Each cycle is one "hour" of a simulated clock: `--runs` runs are created,
ship `--lines` log lines of 100 bytes each through the store, and finish;
then the retention service runs as the control plane runs it (a log cap round
and a sweep). Runs are kept `--retain` hours, so the database (file plus
write-ahead log) grows for that many cycles and then stays flat: each sweep
deletes what the next cycle adds, and the freed pages go back to the file
system. Prints one line per cycle: runs stored, log lines stored, file size.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controlplane.core import runs as lifecycle
from controlplane.core.codespec import Codespec
from controlplane.core.logs import LogLine
from controlplane.core.runs import Target
from controlplane.services.retention import Retention, RetentionSettings
from controlplane.store.sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def size_of(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def cycle(store: SqliteStore, clock: Clock, runs: int, lines: int) -> None:
    job = Target(Codespec(name="bench", image="img"), "bench")
    for _ in range(runs):
        run = await store.insert_run(
            lifecycle.new_run(0, job, None, clock.now, tags={"bench": "1"})
        )
        for start in range(0, lines, 500):
            batch = [
                LogLine(run.id, "job", 0, "stdout", i, clock.now.timestamp() * 1e9 + i, "x" * 100)
                for i in range(start, min(lines, start + 500))
            ]
            await store.append_logs(batch)
        lifecycle.fail(run, clock.now, "done")
        await store.save_run(run)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="muster-bench-retention-") as tmp:
        db = Path(tmp) / "cp.db"
        store = await SqliteStore.open(db)
        clock = Clock()
        settings = RetentionSettings(
            retain_finished=timedelta(hours=args.retain), max_log_bytes=args.max_log_bytes or None
        )
        retention = Retention(store, settings, clock)
        print(
            f"{args.runs} runs x {args.lines} lines of 100 B per cycle (1 h), "
            f"retention {args.retain} h"
        )
        print(f"{'cycle':>5} {'runs':>6} {'lines':>9} {'db MiB':>8} {'sweep s':>8}")
        try:
            for n in range(1, args.cycles + 1):
                await cycle(store, clock, args.runs, args.lines)
                clock.now += timedelta(hours=1)
                began = time.perf_counter()
                await retention.cap_logs()
                await retention.sweep()
                took = time.perf_counter() - began
                counts = await store.count_runs(tags={}, since=None)
                stored = sum(counts.values())
                db_conn = store._db
                log_lines = db_conn.execute("SELECT COUNT(*) FROM logs").fetchone()[0]
                mib = size_of(db) / 2**20
                print(f"{n:>5} {stored:>6} {log_lines:>9} {mib:>8.1f} {took:>8.2f}")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--retain", type=int, default=3, help="hours")
    parser.add_argument("--max-log-bytes", type=int, default=0, help="0: no cap")
    asyncio.run(main(parser.parse_args()))
