"""Following a Podman container's log: its log file by offset, else the log API.

:meth:`PodmanLogReader.follow` reads the container's k8s-file log
straight from the host (``.HostConfig.LogConfig.Path``; see
:mod:`agent.podman_logfile`): by offset, so every line is read once, in order,
within a poll period (``file_poll``) of being written, and across conmon's
rotations at the size cap without losing a line. Lines longer than the part
limit (64 KiB) come in parts (:mod:`agent.logparts`), so a reader never holds
more than a part per stream. Where the file cannot be read (an agent in a
container without the host's storage, or another log driver), it falls back
to Podman's log API, as follows.

Podman 4.3 loses lines when its log API *follows* a container (seen
here: ``podman logs -f`` of a 100,000-line container returns a different,
incomplete count each time, even once the container has exited), while a
plain read returns every line. So the API reading polls with
plain reads over consecutive, non-overlapping time windows ``[since, until)``
(nanosecond bounds, which Podman's ``since``/``until`` honour although its
output timestamps have whole seconds only). ``until`` trails the clock by
``settle`` seconds, so conmon (which stamps a line and writes it within
microseconds) has written every line of a window before the window is read;
once the container has stopped, a last read without ``until`` takes the rest.
Each read streams in a reader thread of its own pool and hands lines to the
event loop through a bounded queue, so a slow consumer slows the reader down
and nothing is dropped; Podman keeps the lines in its log file meanwhile.

When conmon truncates a log at its size cap, the file reader keeps the old
file open and reads it to its end first, so nothing is lost; the API reading
(which sees only the current file) loses the lines written before the
replacement and not yet read, and carries on with the newer lines (the windows
are by time, not by file offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from podman import PodmanClient
from podman.errors import NotFound

from agent.backoff import backoff
from agent.logparts import DEFAULT_PART_BYTES
from agent.logutil import log
from agent.podman_client import explain
from agent.podman_logfile import LogFileTail, SequenceBases
from agent.podman_logs import NS, LogDecoder, format_rfc3339_ns, parse_rfc3339_ns
from agent.runtime import LogLine
from agent.thread_handoff import Abandoned, Handoff

_T = TypeVar("_T")
_log = logging.getLogger(__name__)
# Podman states in which a container may still write output.
_LIVE_STATES = frozenset(
    {"running", "paused", "stopping", "created", "configured", "initialized", "restarting"}
)
LOG_CHUNK_LINES = 500
"""Lines per chunk a log reader hands to the event loop."""
LOG_STATE_EVERY = 1.0
"""Seconds between two looks at the state of a container whose log file is idle
(a teardown's stop looks at once)."""


class PodmanLogReader:
    """Follows the logs of one node's containers, in a thread pool of its own."""

    def __init__(
        self,
        client: Callable[[], PodmanClient],
        *,
        threads: int = 32,
        settle: float = 0.5,
        poll: tuple[float, float] = (0.1, 2.0),
        files: bool = True,
        file_poll: tuple[float, float] = (0.05, 0.5),
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        """``client``: the calling thread's Podman client. ``settle``: how far API
        windows trail the clock; ``poll``: the shortest and longest pause between
        two API reads of one container (short while lines flow, growing when
        idle); ``files``: read log files directly where they are readable (else
        always the API); ``file_poll``: the shortest and longest pause between two
        looks at an idle log file; ``part_bytes``: the longest part of a line."""
        self._client = client
        # Log reads get their own pool: a reader held back by a slow consumer
        # must never delay a start, stop or status poll.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="podman-logs")
        self._settle_ns = int(settle * NS)
        self._poll = poll
        self._files = files
        self._file_poll = file_poll
        self._part_bytes = part_bytes
        self._file_warned = False
        self._bases = SequenceBases()
        self._idle_tails: dict[str, LogFileTail] = {}
        """Open log files of containers whose follower was cancelled (not finished):
        the next follower re-reads the held file, even if conmon replaced it since."""
        self._handoffs: set[Handoff] = set()
        self._wakers: dict[str, set[asyncio.Event]] = {}

    def wake(self, name: str) -> None:
        """Make the followers of ``name`` look again at once (it is being stopped)."""
        for waker in self._wakers.get(name, ()):
            waker.set()

    async def close(self) -> None:
        """Stop every reader and close the files and the pool."""
        for handoff in list(self._handoffs):
            handoff.close()
        for name in list(self._idle_tails):
            self.forget(name)
        await asyncio.to_thread(self._executor.shutdown, True)

    async def follow(self, name: str) -> AsyncGenerator[list[LogLine], None]:
        """Every line of ``name`` from the first; see the module docstring for how."""
        tail = await self._open_log_file(name) if self._files else None
        source = self._follow_file(name, tail) if tail else self._follow_api(name)
        async with contextlib.aclosing(source) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _open_log_file(self, name: str) -> LogFileTail | None:
        """A tail of ``name``'s k8s-file log from its first line (the file a cancelled
        follower held, else the container's current file), or ``None`` where the
        file cannot be read."""
        idle = self._idle_tails.pop(name, None)
        if idle is not None:
            try:
                await self._call(idle.rewind)
                return idle
            except OSError:
                idle.close()
        for attempt in range(4):
            try:
                return await self._call(self._open_log_file_sync, name)
            except Exception as exc:
                # Podman 4.3 may fail an inspect of a container that is just exiting
                # ("read /proc/N/cgroup: no such process"): look again shortly.
                log(_log, logging.DEBUG, "log_file_lookup_failed", name=name, error=explain(exc))
                await asyncio.sleep(backoff(0.1, 0.8, attempt + 1))
        return None

    def _release_tail(self, name: str, tail: LogFileTail, reading: Future[int] | None) -> None:
        """A follower of ``name`` stopped before the end: keep its file open for the next."""
        if reading is not None and not reading.done():  # its thread still reads: not reusable
            reading.add_done_callback(lambda _: tail.close())
            return
        if not os.path.exists(tail.path):  # the container was removed meanwhile
            tail.close()
            self.forget(name)
            return
        previous = self._idle_tails.pop(name, None)
        if previous is not None:
            previous.close()
        self._idle_tails[name] = tail

    def forget(self, name: str) -> None:
        """``name`` was removed: nothing of its log files is needed any more."""
        idle = self._idle_tails.pop(name, None)
        if idle is not None:
            idle.close()
        self._bases.forget(name)

    async def _follow_file(
        self, name: str, tail: LogFileTail
    ) -> AsyncGenerator[list[LogLine], None]:
        """Every line of the log file from the first until the container has stopped."""
        loop = asyncio.get_running_loop()
        shortest, longest = self._file_poll
        idle = 0  # looks in a row that found nothing: the pause doubles with each
        check_at = 0.0
        final = done = False
        reading: Future[int] | None = None
        waker = asyncio.Event()
        self._wakers.setdefault(name, set()).add(waker)
        try:
            while True:
                woken = waker.is_set()
                waker.clear()
                out: list[LogLine] = []
                reading = self._executor.submit(tail.read, out)
                read = await asyncio.wrap_future(reading)
                for start in range(0, len(out), LOG_CHUNK_LINES):
                    yield out[start : start + LOG_CHUNK_LINES]
                if read:
                    idle = 0
                    continue
                if final:  # stopped, and read to the end after that
                    out = []
                    tail.finish(out)
                    done = True
                    if out:
                        yield out
                    _log_file_done(name, tail)
                    return
                if woken or loop.time() >= check_at:
                    try:
                        settle_in = await self._call(self._stopped_for, name)
                    except Exception as exc:  # as above: look again shortly
                        log(_log, logging.DEBUG, "log_state_failed", name=name, error=explain(exc))
                        check_at = loop.time() + shortest
                        await _sleep(backoff(shortest, longest, idle + 1), waker)
                        continue
                    if settle_in is not None and settle_in <= 0:
                        final = True  # read once more: what it wrote last is there now
                        continue
                    if settle_in is not None:
                        await asyncio.sleep(settle_in)
                        continue
                    check_at = loop.time() + LOG_STATE_EVERY
                await _sleep(backoff(shortest, longest, idle + 1), waker)
                idle += 1
        finally:
            _warn_lines_lost(name, tail)
            if done:
                tail.close()
            else:
                self._release_tail(name, tail, reading)
            self._forget_waker(name, waker)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on a log reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _forget_waker(self, name: str, waker: asyncio.Event) -> None:
        wakers = self._wakers.get(name)
        if wakers is not None:
            wakers.discard(waker)
            if not wakers:
                del self._wakers[name]

    async def _follow_api(self, name: str) -> AsyncGenerator[list[LogLine], None]:
        """Every line of ``name`` through the log API, by time windows."""
        cursor = _LogCursor(LogDecoder(self._part_bytes))
        shortest, longest = self._poll
        idle = 0  # reads in a row that found nothing
        failures = 0
        waker = asyncio.Event()
        self._wakers.setdefault(name, set()).add(waker)
        try:
            while True:
                waker.clear()
                item: _ReadDone | None = None
                async with contextlib.aclosing(self._read_log_once(name, cursor)) as chunks:
                    async for chunk in chunks:
                        if isinstance(chunk, _ReadDone):
                            item = chunk
                        else:
                            yield chunk
                assert item is not None  # a read always ends with its _ReadDone
                if isinstance(item.result, BaseException):
                    failures += 1
                    delay = backoff(2 * shortest, 5.0, failures)
                    log(
                        _log,
                        logging.WARNING if failures == 1 else logging.DEBUG,
                        "log_read_failed",
                        name=name,
                        error=explain(item.result)
                        if isinstance(item.result, Exception)
                        else item.result,
                        retry_in=f"{delay:.2f}s",
                    )
                    await _sleep(delay, waker)
                    continue
                failures = 0
                read = item.result
                if read.finished:
                    return
                if read.settle_in is not None:  # stopped: read the rest once it has settled
                    await asyncio.sleep(max(0.01, read.settle_in))
                    continue
                idle = 0 if read.lines else idle + 1
                # Each read makes Podman scan the whole log file: never spend more
                # than about half of the time reading one container's log.
                await _sleep(max(backoff(shortest, longest, idle + 1), read.busy), waker)
        finally:
            self._forget_waker(name, waker)

    async def _read_log_once(
        self, name: str, cursor: _LogCursor
    ) -> AsyncGenerator[list[LogLine] | _ReadDone, None]:
        """One window read in a reader thread: its chunks, then its ``_ReadDone``."""
        loop = asyncio.get_running_loop()
        handoff = Handoff(loop)
        self._handoffs.add(handoff)
        future = loop.run_in_executor(self._executor, self._log_reader, name, cursor, handoff)
        future.add_done_callback(_retrieve)
        try:
            while True:
                item = await handoff.get()
                yield item
                if isinstance(item, _ReadDone):
                    return
        finally:
            handoff.close()
            self._handoffs.discard(handoff)

    def _open_log_file_sync(self, name: str) -> LogFileTail | None:
        try:
            container = self._client().containers.get(name)
        except NotFound:
            return None
        config = (container.attrs.get("HostConfig") or {}).get("LogConfig") or {}
        path = config.get("Path")
        if config.get("Type") != "k8s-file" or not path:
            return None
        try:
            return LogFileTail(str(path), self._part_bytes, self._bases, name)
        except OSError as exc:
            if not self._file_warned:  # the same for every container: say it once
                self._file_warned = True
                log(
                    _log,
                    logging.WARNING,
                    "log_file_unreadable",
                    name=name,
                    path=path,
                    error=exc.strerror or exc,
                    fallback="podman log API",
                )
            return None

    def _stopped_for(self, name: str) -> float | None:
        """``None`` while ``name`` may still write; once it has stopped, the
        seconds until its output has settled in its log (<= 0: now; a removed
        container has nothing more to write)."""
        try:
            container = self._client().containers.get(name)
        except NotFound:
            return 0.0
        state = container.attrs.get("State") or {}
        if str(state.get("Status", "")).lower() in _LIVE_STATES:
            return None
        try:
            ready_at = parse_rfc3339_ns(str(state.get("FinishedAt", ""))) + self._settle_ns
        except ValueError:
            return 0.0
        return (ready_at - time.time_ns()) / NS

    def _log_reader(self, name: str, cursor: _LogCursor, handoff: Handoff) -> None:
        """One read of ``name``'s next log window; always ends with a ``_ReadDone``."""
        result: _Read | BaseException
        try:
            result = self._read_log_window(name, cursor, handoff)
        except Abandoned:
            return
        except Exception as exc:
            result = exc
        try:
            handoff.put(_ReadDone(result))
        except Abandoned:
            pass

    def _read_log_window(self, name: str, cursor: _LogCursor, handoff: Handoff) -> _Read:
        began = time.monotonic()
        client = self._client()
        try:
            container = client.containers.get(name)
        except NotFound:
            return self._logs_gone(cursor, handoff, began)
        state = container.attrs.get("State") or {}
        now = time.time_ns()
        final, settle_in = False, None
        if str(state.get("Status", "")).lower() not in _LIVE_STATES:
            try:
                ready_at = parse_rfc3339_ns(str(state.get("FinishedAt", ""))) + self._settle_ns
            except ValueError:
                ready_at = 0
            final = now >= ready_at
            settle_in = None if final else (ready_at - now) / NS
        until = None if final else now - self._settle_ns
        if until is not None and cursor.since is not None and until <= cursor.since:
            return _Read(False, 0, time.monotonic() - began, settle_in)
        params: dict[str, Any] = {"stdout": True, "stderr": True, "timestamps": True}
        if cursor.since is not None:
            # Podman keeps lines strictly after ``since`` and strictly before ``until``.
            params["since"] = format_rfc3339_ns(cursor.since - 1)
        if until is not None:
            params["until"] = format_rfc3339_ns(until)
        decoder = cursor.decoder
        decoder.begin(skip=cursor.frames_done)
        out: list[LogLine] = []
        lines = 0
        waited = 0.0
        try:
            try:
                response = client.api.get(
                    f"/containers/{container.id}/logs", params=params, stream=True
                )
                response.raise_for_status()
            except NotFound:
                return self._logs_gone(cursor, handoff, began)
            try:
                for data in response.iter_content(chunk_size=65536):
                    decoder.feed(data, out)
                    if len(out) >= LOG_CHUNK_LINES:
                        lines += len(out)
                        waited += handoff.put(out)
                        out = []
            finally:
                response.close()
            if final:
                decoder.finish(out)
        finally:
            # Hand over what was decoded even when the read failed, and remember
            # how far this window got, so that the retry skips exactly that.
            cursor.frames_done = max(cursor.frames_done, decoder.frames)
            if out:
                lines += len(out)
                waited += handoff.put(out)
        cursor.since, cursor.frames_done = until, 0
        return _Read(final, lines, time.monotonic() - began - waited, None)

    @staticmethod
    def _logs_gone(cursor: _LogCursor, handoff: Handoff, began: float) -> _Read:
        """The container was removed: its partial lines are all that is left."""
        out: list[LogLine] = []
        cursor.decoder.finish(out)
        if out:
            handoff.put(out)
        return _Read(True, len(out), time.monotonic() - began, None)


@dataclass
class _LogCursor:
    """Where one container's log reading stands between two API reads."""

    decoder: LogDecoder = field(default_factory=LogDecoder)
    since: int | None = None
    """Start (ns, inclusive) of the next window; ``None``: from the first line."""
    frames_done: int = 0
    """Frames of the current window already handed over by a failed read."""


@dataclass(frozen=True)
class _Read:
    """What one window read found."""

    finished: bool
    """The container stopped (or is gone) and everything was handed over."""
    lines: int
    busy: float
    """Seconds the read took, not counting waits for the consumer."""
    settle_in: float | None
    """Stopped, but the last read must wait this many seconds more."""


@dataclass(frozen=True)
class _ReadDone:
    """Marks the end of one read in the handoff queue."""

    result: _Read | BaseException


def _log_file_done(name: str, tail: LogFileTail) -> None:
    log(
        _log,
        logging.DEBUG,
        "log_file_done",
        name=name,
        rotations=tail.rotations,
        truncations=tail.truncations,
        files_skipped=tail.skipped,
        bad_records=tail.bad_records,
    )


def _warn_lines_lost(name: str, tail: LogFileTail) -> None:
    if tail.truncations or tail.skipped:  # lines were written and never read
        log(
            _log,
            logging.WARNING,
            "log_lines_lost",
            name=name,
            files_skipped=tail.skipped,
            truncations=tail.truncations,
        )


async def _sleep(seconds: float, waker: asyncio.Event) -> None:
    """Sleep ``seconds``, or less if ``waker`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waker.wait(), seconds)


def _retrieve(future: Future[Any] | asyncio.Future[Any]) -> None:
    """Mark a reader's outcome as seen (it is reported through the handoff)."""
    if not future.cancelled():
        future.exception()
