"""Prometheus metrics plumbing both services use: a `/metrics` HTTP endpoint
and a proxy that times every coroutine method of an adapter (the store, the
container runtime) without the adapter knowing.

Each service keeps its own `CollectorRegistry` (not the process-global one),
so several control planes or agents in one process (tests, benchmarks) never
share or collide on metrics.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip
"""Seconds: from half a millisecond (an in-memory call) to half a minute (a pull)."""


class TimedProxy:
    """Stands in for `target`: each coroutine method call is observed in
    `histogram` under label `method`; everything else passes through."""

    def __init__(
        self,
        target: Any,
        histogram: Histogram,
        methods: frozenset[str] | None = None,
        observe: Callable[[str, tuple, dict], None] | None = None,
    ) -> None:
        """`methods`: only these are timed (None: every coroutine method);
        `observe(name, args, kwargs)` is told of every timed call (counters)."""
        self._target = target
        self._histogram = histogram
        self._methods = methods
        self._observe = observe

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        timed = self._methods is None or name in self._methods
        if not (timed and inspect.iscoroutinefunction(attr)):
            return attr
        child = self._histogram.labels(method=name)
        observe = self._observe

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                child.observe(time.perf_counter() - began)
                if observe is not None:
                    observe(name, args, kwargs)

        return call


class MetricsEndpoint:
    """`GET /metrics` (Prometheus text format) on HOST:PORT, served on the
    service's own event loop."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str) -> int:
        """Listen on `listen` (HOST:PORT, port 0: any); returns the port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp keeps the bound socket private
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
