"""Run logs: ingest batches from agents, serve merged reads and live follows.

Reads are in time order (time, then role, replica, stream, line number).
A follow first sends what is stored in time order, then new lines as they
arrive, and ends once the run has ended and its logs are complete: every
container that was placed has been removed (agents ship a container's last
lines before reporting it removed), or `complete_after` has passed since the
run ended, for nodes that never come back.

Long lines are stored and served in the parts the agents ship (each at most
64 KiB, `partial` on all but the last; see `LogLine.partial` in run.proto),
and a batch of lines is cut so that its text stays within about 1 MiB, so no
reply comes near gRPC's 4 MiB message limit. Clients join the parts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from controlplane.core.errors import InvalidArgument
from controlplane.core.logs import LogLine, StoredLine, time_key
from controlplane.core.runs import Run
from controlplane.services.orchestrator import Orchestrator
from controlplane.store.base import Store
from muster.common.limits import LOG_BATCH_BYTES

CHUNK = 1000
log = logging.getLogger(__name__)


def logs_complete(run: Run, now: datetime, complete_after: timedelta) -> bool:
    """Whether no more lines can arrive for the run."""
    if not run.terminal:
        return False
    if run.finished_at is not None and now - run.finished_at >= complete_after:
        return True
    return all(
        r.state in ("removed", "failed") or not r.node or r.state == "pending" for r in run.replicas
    )


class LogService:
    """Stores and serves log lines."""

    def __init__(
        self,
        store: Store,
        orchestrator: Orchestrator,
        complete_after: timedelta = timedelta(seconds=15),
    ) -> None:
        self._store = store
        self._orchestrator = orchestrator
        self._complete_after = complete_after
        self._arrived: dict[int, asyncio.Event] = {}  # run id -> set when lines arrive

    async def ingest(self, lines: list[LogLine]) -> int:
        """Store a batch (duplicates ignored) and wake followers."""
        added = await self._store.append_logs(lines)
        if added:
            for run_id in {ln.run_id for ln in lines}:
                event = self._arrived.pop(run_id, None)
                if event is not None:
                    event.set()  # wakes this run's followers only
        return added

    async def ingest_from(self, node: str, lines: list[LogLine]) -> int:
        """Store lines a node shipped, keeping only those of replicas placed on
        that node: a node may speak only for its own containers."""
        runs: dict[int, Run | None] = {}
        verdicts: dict[tuple[int, str, int], bool] = {}  # once per container, not per line
        kept: list[LogLine] = []
        for ln in lines:
            key = (ln.run_id, ln.role, ln.replica)
            ok = verdicts.get(key)
            if ok is None:
                ok = self._orchestrator.placed_on(node, ln.run_id, ln.role, ln.replica)
                if ok is None:
                    if ln.run_id not in runs:
                        runs[ln.run_id] = await self._store.get_run(ln.run_id)
                    run = runs[ln.run_id]
                    replica = run.replica(ln.role, ln.replica) if run else None
                    ok = replica is not None and replica.node == node
                verdicts[key] = ok
            if ok:
                kept.append(ln)
        if len(kept) < len(lines):
            log.warning(
                "event=logs_refused node=%s lines=%d reason=not_placed_on_node",
                node,
                len(lines) - len(kept),
            )
        return await self.ingest(kept) if kept else 0

    async def read(
        self, run_id: int, *, follow: bool, since_ns: int | None, tail: int, resume_after: int = 0
    ) -> AsyncIterator[tuple[list[StoredLine], int]]:
        """Batches of lines (of at most about 1 MiB of text), each with a resume
        point (0 while none is safe yet); with `follow`, keeps going until the
        logs are complete."""
        batches = self._read(
            run_id, follow=follow, since_ns=since_ns, tail=tail, resume_after=resume_after
        )
        async for lines, resume in batches:
            pieces = sized(lines)
            for piece in pieces[:-1]:
                yield piece, 0  # the resume point holds once the whole batch was sent
            yield pieces[-1], resume

    async def _read(
        self, run_id: int, *, follow: bool, since_ns: int | None, tail: int, resume_after: int
    ) -> AsyncIterator[tuple[list[StoredLine], int]]:
        if tail < 0:
            raise InvalidArgument("tail", "must not be negative")
        if resume_after < 0:
            raise InvalidArgument("resume_after", "must not be negative")
        await self._orchestrator.get_run(run_id)  # NotFound for unknown runs
        if resume_after:
            async for batch in self._follow(run_id, resume_after, since_ns):
                yield batch
            return
        max_id = await self._store.last_log_id(run_id)
        async for chunk in self._stored(run_id, since_ns, tail, max_id):
            yield chunk, 0
        if follow:
            yield [], max_id  # everything up to max_id is sent: a safe resume point
            async for batch in self._follow(run_id, max_id, since_ns):
                yield batch

    async def _stored(
        self, run_id: int, since_ns: int | None, tail: int, max_id: int
    ) -> AsyncIterator[list[StoredLine]]:
        """What is stored now, in time order."""
        after = None
        if tail:
            # Memory stays bounded however large `tail` is: find where the last
            # `tail` lines begin, then read on from there a chunk at a time.
            start = await self._store.tail_start(
                run_id, count=tail, since_ns=since_ns, max_id=max_id
            )
            if start is None:
                return
            after = (start[0], start[1] - 1)  # the key just before the first line
        while True:
            chunk = await self._store.read_logs(
                run_id, since_ns=since_ns, max_id=max_id, after=after, limit=CHUNK
            )
            if not chunk:
                return
            yield chunk
            after = time_key(chunk[-1])

    async def _follow(
        self, run_id: int, after_id: int, since_ns: int | None
    ) -> AsyncIterator[tuple[list[StoredLine], int]]:
        """New lines in arrival order (sorted by time within a batch) until complete."""
        try:
            while True:
                # Read the run before the lines: if it is complete now, the lines
                # read next are the last ones.
                run = await self._orchestrator.get_run(run_id)
                complete = logs_complete(
                    run, datetime.now(run.created_at.tzinfo), self._complete_after
                )
                while True:
                    chunk = await self._store.new_logs(run_id, after_id=after_id, limit=CHUNK)
                    if not chunk:
                        break
                    after_id = chunk[-1].id
                    fresh = [s for s in chunk if since_ns is None or s.line.time_ns >= since_ns]
                    yield sorted(fresh, key=time_key), after_id
                if complete:
                    return
                event = self._arrived.setdefault(run_id, asyncio.Event())
                try:
                    # New lines wake us; the timeout re-checks whether the run ended.
                    await asyncio.wait_for(event.wait(), 0.5)
                except TimeoutError:
                    pass
        finally:
            # However the follow ends, no per-run entry outlives it (another
            # follower of the run simply makes a new one at its next wait).
            self._arrived.pop(run_id, None)


def sized(lines: list[StoredLine], limit: int = LOG_BATCH_BYTES) -> list[list[StoredLine]]:
    """`lines` cut into consecutive batches whose text is at most about `limit`
    bytes (a batch ends after the line that reaches it; at least one batch)."""
    batches: list[list[StoredLine]] = []
    start = size = 0
    for i, stored in enumerate(lines):
        text = stored.line.text
        size += 64 + (len(text) if text.isascii() else len(text.encode("utf-8", "replace")))
        if size >= limit:
            batches.append(lines[start : i + 1])
            start, size = i + 1, 0
    if start < len(lines) or not batches:
        batches.append(lines[start:])
    return batches
