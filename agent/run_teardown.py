"""Tearing a run's containers down on a node, and trying again while some stay.

A teardown is one background task per run (asking again while it runs
changes nothing). It lets the run's starts in flight settle first, stops the
readiness probes and the buffer copies, stops the containers, waits until
their log followers have shipped the last lines (unless told not to), removes
them, and reports REMOVED only for containers that are really gone (it lists
the node again to know). One that left containers behind is started again by
the watch loop once its pause has passed (:class:`~agent.teardowns.TeardownRetries`:
doubling pauses from the first to the longest).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agent.buffer_copies import BufferCopies
from agent.logship import LogShipper
from agent.logutil import log
from agent.readiness import Probes
from agent.runtime import ContainerInfo, Runtime
from agent.status_book import StatusBook
from agent.teardowns import TeardownRetries

_log = logging.getLogger(__name__)
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
"""Starts a background task of the supervisor under a name."""


class RunTeardowns:
    """The teardowns in flight on this node, and those to be tried again."""

    def __init__(
        self,
        runtime: Runtime,
        book: StatusBook,
        *,
        probes: Probes,
        copies: BufferCopies,
        logs: LogShipper,
        settle_starts: Callable[[int], Awaitable[None]],
        ship_logs: Callable[[], bool],
        spawn: Spawn,
        log_flush_timeout: float,
        retry: tuple[float, float],
    ) -> None:
        """``settle_starts(run_id)`` waits for (or cancels) the run's starts in flight;
        ``ship_logs()`` says whether logs are shipped at all (a stream took them);
        ``log_flush_timeout``: how long a teardown waits without any batch of the
        stopped containers' logs going out; ``retry``: the first and longest pause
        before a teardown that left containers behind is tried again."""
        self._rt = runtime
        self._book = book
        self._probes = probes
        self._copies = copies
        self._logs = logs
        self._settle_starts = settle_starts
        self._ship_logs = ship_logs
        self._spawn = spawn
        self._log_flush_timeout = log_flush_timeout
        self._running: dict[int, asyncio.Task[None]] = {}
        self._failed = TeardownRetries(*retry)
        """Runs whose teardown left containers behind."""

    def running(self, run_id: int) -> asyncio.Task[None] | None:
        """The teardown of ``run_id`` in flight, if any."""
        return self._running.get(run_id)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._running

    def start(self, run_id: int, *, keep_logs: bool = True) -> None:
        """Remove every container of ``run_id`` in the background (idempotent)."""
        if run_id in self._running:
            return
        task = self._spawn(self._teardown(run_id, keep_logs), f"teardown {run_id}")
        self._running[run_id] = task
        task.add_done_callback(lambda _t: self._running.pop(run_id, None))

    def retry_due(self) -> None:
        """Start again every failed teardown whose pause has passed."""
        now = asyncio.get_running_loop().time()
        for run_id, failures in self._failed.due(now):
            if run_id not in self._running:
                log(_log, logging.INFO, "teardown_retry", run_id=run_id, failures=failures)
                self.start(run_id)

    async def _teardown(self, run_id: int, keep_logs: bool = True) -> None:
        log(_log, logging.INFO, "teardown_run", run_id=run_id)
        await self._settle_starts(run_id)
        names = self._book.names_of(run_id)
        for name in names:
            self._probes.stop(name)
        # Before the job is stopped, so that no output is completed by its end of file.
        await self._copies.stop_run(run_id)
        await self._stop_and_flush(run_id, names, keep_logs)
        removed: list[ContainerInfo] = []
        try:
            removed = await self._rt.remove_run(run_id)
        except Exception as exc:  # some may be gone anyway: the re-list below tells
            log(_log, logging.ERROR, "teardown_failed", run_id=run_id, error=exc)
        # Only containers that are really gone are reported REMOVED: re-list.
        remaining: set[str] | None
        try:
            remaining = {i.name for i in await self._rt.list_managed() if i.run_id == run_id}
        except Exception as exc:
            log(_log, logging.WARNING, "teardown_check_failed", run_id=run_id, error=exc)
            remaining = None
        for name, status in self._book.removed(run_id, removed, remaining).items():
            self._book.touch(name)
            self._probes.stop(name)
            self._book.forget(name)
            self._logs.forget(name)
            await self._copies.remove(name)
            self._book.send(status)
        self._note_outcome(run_id, remaining)

    def _note_outcome(self, run_id: int, remaining: set[str] | None) -> None:
        """Schedule the next try of a teardown that left containers behind (or may have)."""
        if remaining is None or remaining:
            delay = self._failed.failed(run_id, asyncio.get_running_loop().time())
            log(
                _log,
                logging.WARNING,
                "teardown_incomplete",
                run_id=run_id,
                left=sorted(remaining) if remaining is not None else "unknown",
                retry_in=f"{delay:.2f}s",
            )
        else:
            self._failed.succeeded(run_id)

    async def _stop_and_flush(self, run_id: int, names: list[str], keep_logs: bool) -> None:
        """Stop, let the log followers read to the end (removal comes next): the logs
        live in the containers, and all of them go out before REMOVED."""
        try:
            await self._rt.stop_run(run_id)
        except Exception as exc:  # removal (which stops too) is still attempted
            log(_log, logging.WARNING, "stop_failed", run_id=run_id, error=exc)
        if (
            keep_logs
            and self._ship_logs()
            and not await self._logs.flush(names, self._log_flush_timeout)
        ):
            log(_log, logging.WARNING, "log_flush_timeout", run_id=run_id)
