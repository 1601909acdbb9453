"""Waiting on a condition with a deadline: the one way tests wait (a sync and an
async form), so no test sleeps and hopes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(
    predicate: Callable[[], Any],
    seconds: float,
    what: str | Callable[[], str],
    interval: float = 0.05,
) -> Any:
    """The async form of wait_for: poll `predicate` (a plain or a coroutine
    function) until it returns something truthy, and return that; fail after
    `seconds`, saying `what` was awaited (a callable is asked at that moment,
    so it can show the last state seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {seconds}s waiting for {said}")
        await asyncio.sleep(interval)
