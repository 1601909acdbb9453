"""A bounded queue from one blocking reader thread to the event loop.

The Podman log API is read in threads (podman-py blocks); what a thread reads
goes to the event loop through a :class:`Handoff`, so a slow consumer slows
the reader down and nothing is dropped, and a consumer that goes away makes
the reader stop (:class:`Abandoned`) instead of blocking forever.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any


class Abandoned(Exception):
    """The consumer of a log read went away; the reader thread stops."""


class Handoff:
    """A bounded queue from one reader thread to the event loop.

    ``put`` blocks the thread while the queue is full (backpressure, never a
    drop) and gives up once the consumer closed the queue; ``get`` awaits
    without blocking the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 8) -> None:
        """A queue whose consumer runs on ``loop``."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._loop = loop
        self._ready = asyncio.Event()
        self._closed = threading.Event()

    def put(self, item: Any) -> float:
        """(Reader thread) enqueue ``item``; return the seconds spent waiting for room."""
        began = time.monotonic()
        while True:
            if self._closed.is_set():
                raise Abandoned()
            try:
                self._queue.put(item, timeout=0.2)
                break
            except queue.Full:
                continue
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody will ever read
            self._closed.set()
            raise Abandoned() from None
        return time.monotonic() - began

    async def get(self) -> Any:
        """(Event loop) the next item, waiting for one if needed."""
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            self._ready.clear()
            try:  # an item may have arrived between the two checks
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            await self._ready.wait()

    def close(self) -> None:
        """(Event loop) the consumer is gone: make the reader stop."""
        self._closed.set()
