"""Coalescing: whatever is submitted while a call is busy goes to the next
call as one list. Group commit uses it for container reports (many reports,
one transaction) and the SQLite store for point reads (many GetRun misses,
one hop to its thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Hands every item submitted while `handle` is busy to its next call, as
    one list; each submitter waits until the call holding its item returns
    (or gets the exception it raised). One call runs at a time, so items are
    handled in the order they were submitted."""

    def __init__(self, handle: Callable[[list[T]], Awaitable[None]]) -> None:
        self._handle = handle
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, *items: T) -> None:
        """Queue `items` (in order, all in the same call) and wait until they
        have been handled."""
        if not items:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.extend((item, done) for item in items)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._queue:
            taken, self._queue = self._queue, []
            try:
                await self._handle([item for item, _ in taken])
            except BaseException as exc:  # every submitter of this batch hears of it
                for _, done in taken:
                    if done.done():
                        continue
                    if isinstance(exc, Exception):
                        done.set_exception(exc)
                    else:
                        done.cancel()
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)
