"""The supervisor's watch loop: list the node's containers, at once on a hint, else each period.

The runtime announces changes (Podman's event feed); each announcement wakes
the loop at once. Announcements can be missed (the feed ends when Podman
restarts), so the loop lists every poll period anyway, and the feed is
followed again after a short fixed pause. That pause does not grow: the feed
is only a hint, the polling covers the gap, and one reconnect a second
burdens nobody, while a restarted Podman should be followed again promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent.logutil import log
from agent.runtime import Runtime

_log = logging.getLogger(__name__)
FEED_RESTART_PAUSE = 1.0
"""Seconds between the end of the runtime's change feed and following it again."""


async def watch(
    runtime: Runtime,
    reconcile: Callable[[], Awaitable[None]],
    after_each: Callable[[], None],
    poll_interval: float,
) -> None:
    """``reconcile`` (list and report) at once on every announced change and every
    ``poll_interval`` seconds anyway, then ``after_each``; until cancelled."""
    changed = asyncio.Event()
    hints = asyncio.create_task(_follow_changes(runtime, changed), name="agent-changes")
    try:
        await _poll(reconcile, after_each, changed, poll_interval)
    finally:
        hints.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hints


async def _follow_changes(runtime: Runtime, changed: asyncio.Event) -> None:
    """Turn the runtime's change announcements into wake-ups of the loop; if they
    stop (Podman restarted), follow them again after a pause."""
    while True:
        try:
            await runtime.watch_changes(changed.set)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log(_log, logging.DEBUG, "change_feed_ended", error=exc)
        await asyncio.sleep(FEED_RESTART_PAUSE)


async def _poll(
    reconcile: Callable[[], Awaitable[None]],
    after_each: Callable[[], None],
    changed: asyncio.Event,
    poll_interval: float,
) -> None:
    failing = False
    while True:
        changed.clear()
        try:
            await reconcile()
            if failing:
                failing = False
                log(_log, logging.INFO, "watch_recovered")
        except Exception as exc:
            if not failing:  # log transitions, not every poll
                failing = True
                log(_log, logging.WARNING, "watch_failed", error=exc)
        after_each()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), poll_interval)
