"""Retention: the database stays bounded however long the control plane runs.

- Finished runs, with their logs, tags and request ids, are deleted
  `retain_finished` after they finished (--retain-finished, 30 days; 0 keeps
  them forever), by a periodic sweep in small batches: a big run's logs go a
  few thousand lines per transaction, then the run itself, so no transaction
  holds the database for long and nothing waits on the sweep (it runs on its
  own task, never under the orchestrator's lock; only finished runs, which the
  orchestrator no longer holds, are touched).
- A run whose stored log text exceeds `max_log_bytes` (--max-log-bytes-per-run,
  1 GiB) loses its oldest lines, and one marker line before what is left says
  how many were dropped. Checked every few seconds, so a run may be over the
  cap by what its agents ship in that time.
- Request ids older than 24 hours are forgotten.
- After a sweep deleted something, the freed pages are given back to the file
  system (SQLite's incremental vacuum), a batch at a time.

Retention is counted on the wall clock: it is about the calendar ("deleted
30 days after it finished"), and an hour of clock jump moves it by an hour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from controlplane.core.errors import StoreUnavailable
from controlplane.services.codespecs import utcnow
from controlplane.services.orchestrator import REQUEST_TTL
from controlplane.store.base import Store

log = logging.getLogger(__name__)

RUN_BATCH = 100
"""Runs deleted per transaction (after their logs)."""
LOG_BATCH = 5000
"""Log lines deleted (or dropped by the cap) per transaction."""
VACUUM_PAGES = 2000
"""Pages given back per incremental vacuum step (8 MiB with 4 KiB pages)."""
MARKER = (
    "[muster] {dropped} earlier log lines of this run were dropped: its logs exceeded "
    "--max-log-bytes-per-run ({limit})"
)


def human_bytes(n: int) -> str:
    """1073741824 -> '1GiB', 1536 -> '1.5KiB'."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:g}{unit}" if unit != "B" else f"{n}B"


@dataclass(frozen=True)
class RetentionSettings:
    """--retain-finished and --max-log-bytes-per-run, and how often to look."""

    retain_finished: timedelta | None = timedelta(days=30)
    """None (--retain-finished 0): finished runs are kept forever."""
    max_log_bytes: int | None = 1024**3
    """None (--max-log-bytes-per-run 0): no cap."""
    sweep_every: timedelta = timedelta(minutes=1)
    cap_every: timedelta = timedelta(seconds=5)


@dataclass
class SweepResult:
    """What one sweep did."""

    runs: int = 0
    log_lines: int = 0
    requests: int = 0
    pages: int = 0


class Retention:
    """Deletes what is past retention and keeps each run's logs under the cap."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self.settings = settings or RetentionSettings()
        self._clock = clock

    async def run_forever(self) -> None:
        """Cap logs every `cap_every`, sweep every `sweep_every`; errors are
        logged and the next round tries again."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                await self.cap_logs()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.settings.sweep_every.total_seconds()
                    await self.sweep()
            except StoreUnavailable as exc:
                log.warning("event=retention_failed error=%r", str(exc))
            except Exception:
                log.exception("event=retention_failed")
            await asyncio.sleep(self.settings.cap_every.total_seconds())

    async def sweep(self) -> SweepResult:
        """Delete finished runs past retention and old request ids, then give
        the freed space back. Each step is a short transaction of its own."""
        done = SweepResult()
        now = self._clock()
        if self.settings.retain_finished is not None:
            cutoff = now - self.settings.retain_finished
            while ids := await self._store.finished_before(cutoff, RUN_BATCH):
                for run_id in ids:
                    while (n := await self._store.delete_logs(run_id, LOG_BATCH)) > 0:
                        done.log_lines += n
                        await asyncio.sleep(0)  # let the rest of the control plane in
                done.runs += await self._store.delete_runs(ids)
                if len(ids) < RUN_BATCH:
                    break
        while (n := await self._store.forget_requests(now - REQUEST_TTL, LOG_BATCH)) > 0:
            done.requests += n
        if done.runs or done.requests:
            while (pages := await self._store.compact(VACUUM_PAGES)) > 0:
                done.pages += pages
                await asyncio.sleep(0)
        if done.runs or done.requests:
            log.info(
                "event=retention_swept runs=%d log_lines=%d requests=%d pages_freed=%d",
                done.runs,
                done.log_lines,
                done.requests,
                done.pages,
            )
        return done

    async def cap_logs(self) -> int:
        """Drop the oldest lines of every run over --max-log-bytes-per-run;
        returns how many lines were dropped."""
        limit = self.settings.max_log_bytes
        if limit is None:
            return 0
        marker = MARKER.replace("{limit}", human_bytes(limit))
        dropped = 0
        for run_id in await self._store.runs_over_log_cap(limit, RUN_BATCH):
            while (n := await self._store.drop_oldest_logs(run_id, limit, LOG_BATCH, marker)) > 0:
                dropped += n
                await asyncio.sleep(0)
            log.info("event=run_logs_capped run=%d limit=%d", run_id, limit)
        if dropped:
            await self._store.compact(VACUUM_PAGES)
        return dropped
