"""Readiness of workers with endpoints: a probe task per worker until every endpoint accepts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from agent.logutil import log
from agent.messages import Status, addresses
from agent.probe import ip_literal
from agent.runtime import ContainerInfo, ContainerSpec, EndpointTarget, Runtime

_log = logging.getLogger(__name__)
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


def needs_probe(info: ContainerInfo | ContainerSpec) -> bool:
    """Workers with endpoints are ready only once every endpoint accepts."""
    return info.role == "worker" and bool(info.endpoints)


def reachable(targets: list[EndpointTarget]) -> dict[str, Any]:
    """Status fields of a ready worker: its endpoint addresses, and the IP the
    job reaches it at (where the probe connected, the way the job will)."""
    host_ip = ip_literal(targets[0].probe_host) if targets else ""
    return {"endpoints": addresses(targets), "host_ip": host_ip}


def not_accepting(target: EndpointTarget) -> str:
    """The probe message naming the first endpoint that does not accept yet."""
    return f"endpoint '{target.name}' (port {target.port}) not accepting connections yet"


async def accepts_now(runtime: Runtime, name: str) -> bool:
    """Whether ``name`` runs and every endpoint of it accepts, at one look."""
    info = await runtime.inspect(name)
    if info is None or info.state != "running":
        return False
    for target in runtime.endpoint_targets(info):
        if not await runtime.probe(target):
            return False
    return True


class Probes:
    """One probe task per running worker that is not ready yet."""

    def __init__(
        self,
        runtime: Runtime,
        interval: float,
        status_of: Callable[[str], Status | None],
        report: Callable[[Status], None],
        spawn: Spawn,
    ) -> None:
        """Probe through ``runtime`` every ``interval`` seconds; ``status_of`` gives a
        container's last status, ``report`` records a new one, ``spawn`` runs a task."""
        self._rt = runtime
        self._interval = interval
        self._status_of = status_of
        self._report = report
        self._spawn = spawn
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(self, name: str) -> None:
        """Probe ``name`` until it is ready (once: a probe already running goes on)."""
        if name not in self._tasks:
            task = self._spawn(self._until_ready(name), f"probe {name}")
            self._tasks[name] = task
            task.add_done_callback(
                lambda t: self._tasks.pop(name, None) if self._tasks.get(name) is t else None
            )

    def stop(self, name: str) -> None:
        """Stop probing ``name``."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _until_ready(self, name: str) -> None:
        """Probe until every endpoint accepts; stop if the container stops running."""
        info: ContainerInfo | None = None
        failing = False
        while True:
            status = self._status_of(name)
            if status is None or status.state != "running" or status.ready:
                return
            try:
                if info is None or (self._rt.network_mode == "bridge" and info.ip is None):
                    info = await self._rt.inspect(name)
                targets = self._rt.endpoint_targets(info) if info is not None else []
                closed = await self._first_closed(targets)
            except Exception as exc:  # runtime hiccup: keep probing, log once per streak
                level = logging.DEBUG if failing else logging.WARNING
                log(_log, level, "probe_error", name=name, error=exc)
                failing = True
                await asyncio.sleep(self._interval)
                continue
            failing = False
            status = self._status_of(name)
            if status is None or status.state != "running" or info is None:
                await asyncio.sleep(self._interval)
                continue
            if closed is None:
                log(_log, logging.INFO, "container_ready", name=name)
                self._report(replace(status, ready=True, message="", **reachable(targets)))
                return
            self._report(replace(status, ready=False, message=not_accepting(closed)))
            await asyncio.sleep(self._interval)

    async def _first_closed(self, targets: list[EndpointTarget]) -> EndpointTarget | None:
        for target in targets:
            if not await self._rt.probe(target):
                return target
        return None
