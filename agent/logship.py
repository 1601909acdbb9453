"""Log shipping: every managed container's output, as LogBatch messages on the stream.

For each container the agent starts or adopts, a *follower* task reads the
container's lines from the runtime (:meth:`~agent.runtime.Runtime.follow_logs`,
from the very first line), numbers them per stream (``sequence``, 0-based,
stdout and stderr counted separately; or as the runtime numbered them, when
it knows better: lines of a log file that replaced earlier ones) and ships
them in batches of at most ``batch_lines`` lines and ``batch_bytes`` bytes
(1 MiB), or whatever arrived within ``batch_seconds``. A line longer than the
part limit (64 KiB) goes out in parts, each with its own sequence number and
all but the last marked ``partial`` (:mod:`agent.logparts`; the runtimes
already read long lines in parts, so no line is ever held whole).

Followers belong to one Connect stream (a *session*). When the stream breaks,
they are cancelled, and the next stream starts new ones that read every
container from its first line again: the control plane ignores lines it
already has (it deduplicates by run, role, replica, stream and sequence), so
no batch lost with a broken stream is ever missing, and no line waits in the
agent for a stream that may never come.

Backpressure, never loss: the sink (the connection) accepts a batch only when
its window of unsent batches has room, so a follower that produces faster than
the stream sends simply waits, and so does the runtime's reader behind it.

Ordering: a follower's task ends only after its last batch was delivered:
handed to the stream, or, when the sink tracks delivery (the control plane
acknowledges stored batches), acknowledged. So :meth:`LogShipper.flush` lets
the supervisor send a container's REMOVED strictly after all of its lines,
even though status messages overtake log batches in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from agent.logparts import DEFAULT_PART_BYTES, split_line
from agent.logutil import log
from agent.messages import LogBatch, LogEntry, Status
from agent.runtime import LogLine, LogStreamName, Runtime
from muster.common.limits import LOG_BATCH_BYTES

LogSink = Callable[[LogBatch], Awaitable["asyncio.Future[None] | None"]]
"""Hands one batch to the current stream; returns once the stream accepted it,
with a future that is done once the batch was delivered (``None``: accepted is
delivered)."""

FOLLOWED_STATES = frozenset({"running", "exited", "failed"})
"""States in which a container has (or had) a process whose output is followed."""

_ENTRY_OVERHEAD = 64
"""Bytes an entry takes in a batch besides its text, at most (ids, time, framing)."""
_log = logging.getLogger(__name__)


class LogShipper:
    """Runs one follower per container for the current stream."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        batch_lines: int = 500,
        batch_seconds: float = 0.1,
        batch_bytes: int = LOG_BATCH_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        """``batch_lines``/``batch_bytes``/``batch_seconds``: a batch is sent when any
        is reached (a batch never exceeds ``batch_bytes``); ``part_bytes``: the
        longest part of a line."""
        if batch_bytes < part_bytes + _ENTRY_OVERHEAD:
            raise ValueError("a batch must have room for a part of the longest size")
        self._rt = runtime
        self._batch_lines = batch_lines
        self._batch_seconds = batch_seconds
        self._part_bytes = part_bytes
        # Sent once it might not take another part of the longest size.
        self._batch_full = batch_bytes - (part_bytes + _ENTRY_OVERHEAD)
        self._sink: LogSink | None = None
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._batches: dict[str, int] = {}
        """Batches each container's followers had accepted so far (progress, for flush)."""
        self._stopping: set[asyncio.Task[None]] = set()
        self._session_changed = asyncio.Event()

    # -- sessions -------------------------------------------------------------------

    def attach(self, sink: LogSink) -> None:
        """A new stream: ship from now on to ``sink`` (followers start with :meth:`follow`)."""
        self._stop_all()
        self._sink = sink
        self._notify()

    def detach(self) -> None:
        """The stream ended: cancel every follower (the next stream re-reads from the start)."""
        self._stop_all()
        self._sink = None
        self._notify()

    # -- containers -----------------------------------------------------------------

    def follow(self, status: Status) -> None:
        """Ship ``status``'s container from its first line, unless already done this stream."""
        if self._sink is None or status.name in self._followers:
            return
        if status.state not in FOLLOWED_STATES:
            return
        task = asyncio.get_running_loop().create_task(
            self._follow(status, self._sink), name=f"logs {status.name}"
        )
        self._followers[status.name] = task
        task.add_done_callback(self._finished)

    def forget(self, name: str) -> None:
        """The container is gone: drop its follower (cancelled if still running)."""
        self._batches.pop(name, None)
        task = self._followers.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def flush(self, names: Iterable[str], within: float) -> bool:
        """Wait until every line of ``names`` was handed to the current stream.

        That is: a stream is attached, and the follower of each name that has
        one has read to the end and its last batch was delivered. Should the
        stream break meanwhile, the wait goes on with the next stream's
        followers, which start over. Returns ``False`` once ``within`` seconds
        pass in which no batch of ``names`` was accepted: a backlog that is
        being shipped (a stopped container's output is finite) is waited for
        however long it takes, a stuck one is not.
        """
        wanted = set(names)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        seen = self._shipped(wanted)
        while True:
            busy: list[asyncio.Task[None]] = []
            if self._sink is not None:
                busy = [
                    task
                    for name in wanted
                    if (task := self._followers.get(name)) is not None and not task.done()
                ]
                if not busy:
                    return True
            shipped = self._shipped(wanted)
            if shipped != seen:
                seen, deadline = shipped, loop.time() + within
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = loop.create_task(self._session_changed.wait())
            try:
                await asyncio.wait(
                    [*busy, changed],
                    timeout=min(remaining, 0.5),  # and look at the progress again
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()

    def _shipped(self, names: set[str]) -> int:
        return sum(self._batches.get(name, 0) for name in names)

    async def close(self) -> None:
        """Cancel every follower and wait for them to end."""
        self.detach()
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- following --------------------------------------------------------------------

    async def _follow(self, status: Status, sink: LogSink) -> None:
        """Read ``status``'s container to its end, shipping numbered lines in batches."""
        loop = asyncio.get_running_loop()
        counts: dict[LogStreamName, int] = {"stdout": 0, "stderr": 0}
        batch = LogBatch()
        size = 0
        send_at = 0.0
        lines: AsyncIterator[list[LogLine]] = aiter(self._rt.follow_logs(status.name))
        upcoming: asyncio.Future[list[LogLine]] | None = None
        delivered: asyncio.Future[None] | None = None
        shipped = 0
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(anext(lines))
                if batch.entries:
                    done, _ = await asyncio.wait({upcoming}, timeout=send_at - loop.time())
                    if not done:  # the batch is old enough: send it while more may come
                        shipped += len(batch.entries)
                        delivered = await self._ship(status.name, sink, batch)
                        batch, size = LogBatch(), 0
                        continue
                else:
                    await asyncio.wait({upcoming})
                arrived, upcoming = upcoming, None
                try:
                    chunk = arrived.result()
                except StopAsyncIteration:
                    break
                for long_line in chunk:
                    for line in split_line(long_line, self._part_bytes):
                        if not batch.entries:
                            send_at = loop.time() + self._batch_seconds
                        size += _add(batch, status, counts, line)
                        if len(batch.entries) >= self._batch_lines or size > self._batch_full:
                            shipped += len(batch.entries)
                            delivered = await self._ship(status.name, sink, batch)
                            batch, size = LogBatch(), 0
            if batch.entries:
                shipped += len(batch.entries)
                delivered = await self._ship(status.name, sink, batch)
            if delivered is not None:
                await delivered  # batches are delivered in order: this one is the last
            log(_log, logging.DEBUG, "logs_shipped", name=status.name, lines=shipped)
        finally:
            await _stop_reading(upcoming, lines)

    async def _ship(self, name: str, sink: LogSink, batch: LogBatch) -> asyncio.Future[None] | None:
        delivered = await sink(batch)
        self._batches[name] = self._batches.get(name, 0) + 1
        return delivered

    # -- bookkeeping ------------------------------------------------------------------------

    def _stop_all(self) -> None:
        followers, self._followers = self._followers, {}
        for task in followers.values():
            if not task.done():
                task.cancel()
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def _notify(self) -> None:
        event, self._session_changed = self._session_changed, asyncio.Event()
        event.set()

    @staticmethod
    def _finished(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log(
                _log,
                logging.ERROR,
                "log_follower_crashed",
                task=task.get_name(),
                error=task.exception(),
            )


def _add(batch: LogBatch, status: Status, counts: dict[LogStreamName, int], line: LogLine) -> int:
    """Number ``line`` and add it to ``batch``; the bytes it takes there, at most."""
    sequence = counts[line.stream] if line.sequence is None else line.sequence
    counts[line.stream] = sequence + 1
    batch.entries.append(
        LogEntry(
            run_id=status.run_id,
            role=status.role,
            replica=status.replica,
            stream=line.stream,
            sequence=sequence,
            text=line.text,
            time_ns=line.time_ns,
            partial=line.partial,
        )
    )
    text = line.text
    return _ENTRY_OVERHEAD + (len(text) if text.isascii() else len(text.encode("utf-8", "replace")))


async def _stop_reading(
    upcoming: asyncio.Future[list[LogLine]] | None, lines: AsyncIterator[list[LogLine]]
) -> None:
    """Cancel the read in flight and close the runtime's reader."""
    if upcoming is not None:
        upcoming.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
            await upcoming
    aclose = getattr(lines, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
