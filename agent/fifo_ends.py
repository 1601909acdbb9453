"""The agent's own ends of a job's FIFOs: opens that never block the event loop.

Opening a FIFO blocks until someone opens the other end, so
:class:`FifoOpening` opens in a thread of its own and can release itself (by
opening the other end) when nobody will come; :func:`write_all` writes to a
non-blocking FIFO, waiting on the loop while it is full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from agent.backoff import backoff
from agent.logutil import log

_log = logging.getLogger(__name__)

RELEASE_LIMIT = 5.0
"""How long the agent tries to release one of its own blocked FIFO opens."""
RELEASE_PAUSES = (0.01, 0.1)
"""The first and the longest pause between two tries to release an open (the
thread is usually in ``open()`` already, and the first try releases it)."""


class FifoOpening:
    """A blocking open of one end of a FIFO, in a thread of its own.

    The open returns once someone opens the other end; the agent releases it
    itself (when the job is gone, or the copy is stopped) by opening the other
    end without blocking and closing it at once. An fd that arrives when
    nobody waits for it any more is closed."""

    def __init__(self, path: Path, *, write: bool) -> None:
        self._path = str(path)
        self._flags = (os.O_WRONLY if write else os.O_RDONLY) | os.O_CLOEXEC
        other = os.O_RDONLY if write else os.O_WRONLY
        self._other = other | os.O_NONBLOCK | os.O_CLOEXEC
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[int] = self._loop.create_future()
        self._done = threading.Event()
        threading.Thread(target=self._open, name=f"fifo-open {path.name}", daemon=True).start()

    def _open(self) -> None:
        fd: int | None = None
        error: OSError | None = None
        try:
            fd = os.open(self._path, self._flags)
        except OSError as exc:
            error = exc
        self._done.set()
        try:
            self._loop.call_soon_threadsafe(self._deliver, fd, error)
        except RuntimeError:  # the loop is gone (agent stopped)
            if fd is not None:
                os.close(fd)

    def _deliver(self, fd: int | None, error: OSError | None) -> None:
        if self._future.done():  # nobody waits any more
            if fd is not None:
                os.close(fd)
        elif error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(fd)  # type: ignore[arg-type]  # no error: an fd

    @property
    def opened(self) -> bool:
        """Whether the open has returned (the other end was opened)."""
        return self._done.is_set()

    async def wait(self) -> int:
        """The fd, once the other end is opened; cancelling releases the thread."""
        try:
            return await self._future
        except asyncio.CancelledError:
            await self.release()
            raise

    async def release(self) -> None:
        """Open the other end (and close it) until the waiting open returns."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELEASE_LIMIT
        tries = 0
        while not self._done.is_set():
            try:
                os.close(os.open(self._path, self._other))
            except OSError:  # ENXIO: the thread is not in open() yet
                pass
            if self._done.is_set():
                return
            if loop.time() > deadline:
                log(_log, logging.WARNING, "fifo_open_not_released", path=self._path)
                return
            tries += 1
            await asyncio.sleep(backoff(*RELEASE_PAUSES, tries))


async def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking FIFO, waiting on the loop when it is full."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _writable(loop, fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` takes more bytes (or its reader is gone)."""
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)
