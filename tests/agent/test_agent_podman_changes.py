"""Podman's event stream as change hints: an exit is announced, and stopping
the feed ends it at once without ever blocking the event loop (the agent
must shut down promptly, whatever Podman's stream is doing)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.agent.podman_support import BUSYBOX, PodmanNode, random_run_id, spec

pytestmark = [pytest.mark.podman, pytest.mark.timeout(60)]  # a blocked loop hangs, not fails


async def test_an_exit_is_announced_and_the_feed_stops_at_once(podman_node: PodmanNode) -> None:
    runtime = podman_node.runtime()
    await runtime.ensure_network()
    changed = asyncio.Event()
    feed = asyncio.create_task(runtime.watch_changes(changed.set))
    await asyncio.sleep(0.5)  # the stream is open (no event has come yet)
    run_id = random_run_id()
    await runtime.start(spec(run_id, "job", 0, BUSYBOX, ["sh", "-c"], ["exit 0"]))
    await asyncio.wait_for(changed.wait(), 10)
    while True:  # until the stream is quiet for a second (its reader is blocked in a read)
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), 1.0)
        except TimeoutError:
            break

    # A loop that is never blocked: the ticker keeps running while the feed stops.
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.1)
    began = time.monotonic()
    feed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await feed
    stopped = time.monotonic() - began
    await asyncio.sleep(0.1)
    ticking.cancel()
    assert stopped < 1.0, f"stopping the feed took {stopped:.2f} s"
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.2f} s"
