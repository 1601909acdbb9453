"""What the supervisor learns about containers it sees for the first time.

A list result lacks the image digest, and a worker that already served
before an agent restart should be registered as ready at once rather than
flap through not-ready: both are looked up once, for new containers only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from agent.readiness import accepts_now, needs_probe
from agent.runtime import ContainerInfo, Runtime


async def with_digests(
    runtime: Runtime, infos: list[ContainerInfo], new: Callable[[str], bool]
) -> list[ContainerInfo]:
    """``infos`` with the image digest of each ``new`` container that lacks it
    (one inspect each; a failed inspect leaves it without)."""
    fresh = [i for i in infos if not i.image_digest and new(i.name)]
    if not fresh:
        return infos
    found = await asyncio.gather(*(runtime.inspect(i.name) for i in fresh), return_exceptions=True)
    digests = {
        i.name: f.image_digest
        for i, f in zip(fresh, found, strict=True)
        if isinstance(f, ContainerInfo) and f.image_digest
    }
    return [replace(i, image_digest=digests[i.name]) if i.name in digests else i for i in infos]


async def ready_on_arrival(
    runtime: Runtime, infos: list[ContainerInfo], new: Callable[[str], bool]
) -> set[str]:
    """The ``new`` running workers whose endpoints all accept now (one probe round)."""
    fresh = [i for i in infos if new(i.name) and i.state == "running" and needs_probe(i)]
    results = await asyncio.gather(
        *(accepts_now(runtime, i.name) for i in fresh), return_exceptions=True
    )
    return {i.name for i, ok in zip(fresh, results, strict=True) if ok is True}
