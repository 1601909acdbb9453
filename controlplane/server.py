"""Runs the control plane: binds what `controlplane.assembly` wired, competes for
the lease, takes office and keeps the background tasks and health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from controlplane.api.metrics import ControlPlaneMetrics
from controlplane.assembly import (
    SERVICE_NAMES,
    Assembly,
    DataSettings,
    build_control_plane,
    client_address,
)
from controlplane.assembly import registry_key_path as registry_key_path
from controlplane.core.errors import DomainError, StoreUnavailable
from controlplane.dataplane.server import DataPlane
from controlplane.security.tls import SecurityConfig
from controlplane.services.auth import AuthService
from controlplane.services.buffers import BufferService
from controlplane.services.codespecs import utcnow
from controlplane.services.images import ImageService
from controlplane.services.leadership import Candidate, Leadership, LeaseSettings
from controlplane.services.orchestrator import Orchestrator, Settings
from controlplane.services.registries import RegistryService
from controlplane.services.retention import Retention
from controlplane.services.run_buffers import RunBuffers
from controlplane.store.base import Store
from muster.common import clientconfig
from muster.common.clientconfig import ClientConfig
from muster.common.metrics import MetricsEndpoint

log = logging.getLogger(__name__)
LEADER_HEALTH = "muster-leader"
"""Health service name that is SERVING only on the leader (for load balancers and checks)."""


@dataclass
class ControlPlane:
    """A running control plane; `port` is the bound API port (useful with port 0)."""

    server: grpc.aio.Server
    store: Store
    health: health.aio.HealthServicer
    port: int
    orchestrator: Orchestrator
    loop_task: asyncio.Task[None] | None
    agent_port: int = 0
    auth: AuthService | None = None
    admin_file: Path | None = None
    registries: RegistryService | None = None
    images: ImageService | None = None
    retention: Retention | None = None
    retention_task: asyncio.Task[None] | None = None
    buffers: BufferService | None = None
    buffer_deleter_task: asyncio.Task[None] | None = None
    dataplane: DataPlane | None = None
    run_buffers: RunBuffers | None = None
    marker_task: asyncio.Task[None] | None = None
    metrics: MetricsEndpoint | None = None
    leadership: Leadership | None = None
    lease_task: asyncio.Task[None] | None = None
    office_task: asyncio.Task[None] | None = None
    """A follower's: waits to be elected, then takes office."""

    @property
    def secure(self) -> bool:
        """Whether TLS and authentication are on."""
        return self.auth is not None

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let running ones finish, then close the store."""
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        if self.dataplane is not None:
            await self.dataplane.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        await self._cancel_tasks(self.lease_task, self.office_task)
        if self.loop_task is not None:  # leading: observed states kept for write-behind
            with contextlib.suppress(StoreUnavailable):
                await self.orchestrator.stored()
        await self.stand_down()
        if self.leadership is not None and self.leadership.leading:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release_lease(self.leadership.me.holder)
            log.info("event=lease_released epoch=%d", self.leadership.epoch)
        await self.store.close()
        log.info("event=stopped")

    async def stand_down(self) -> None:
        """Stop everything only a leader does (the reconcile loop, retention,
        buffer deletion and output markers); agent streams end by themselves."""
        await self._cancel_tasks(
            self.loop_task, self.retention_task, self.buffer_deleter_task, self.marker_task
        )
        self.loop_task = self.retention_task = self.buffer_deleter_task = self.marker_task = None

    @staticmethod
    async def _cancel_tasks(*tasks: asyncio.Task[None] | None) -> None:
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def take_office(self) -> None:
        """Crash-only: a new leader's state is the database's, loaded exactly as
        after a restart (tokens and logins too: other control planes wrote them)."""
        if self.auth is not None:
            await self.auth.load()
        if self.registries is not None:
            await self.registries.load()
        await self.orchestrator.load()
        assert self.retention is not None and self.buffers is not None
        assert self.run_buffers is not None
        self.loop_task = asyncio.create_task(self.orchestrator.run_forever(), name="reconcile")
        self.retention_task = asyncio.create_task(self.retention.run_forever(), name="retention")
        self.buffer_deleter_task = asyncio.create_task(
            self.buffers.run_deleter(), name="buffer-deleter"
        )
        self.marker_task = asyncio.create_task(self.run_buffers.run_forever(), name="output-marker")
        if self.leadership is not None:
            self.leadership.ready = True
            log.info("event=leading epoch=%d", self.leadership.epoch)
        await self.health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.SERVING)

    async def follow(self) -> None:
        """A follower's life: keep its tokens fresh (the leader makes and revokes
        them), take office once elected, stand down once deposed."""
        leadership = self.leadership
        assert leadership is not None
        while not leadership.elected.is_set():
            if self.auth is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.auth.load()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leadership.elected.wait(), leadership.settings.renew_every)
        while not leadership.ready and not leadership.deposed.is_set():
            try:
                await self.take_office()
            except StoreUnavailable as exc:
                log.warning("event=take_office_failed error=%r", str(exc))
                await self.stand_down()
                await asyncio.sleep(leadership.settings.renew_every)
        await leadership.deposed.wait()
        await self.health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.stand_down()


async def _admin_credentials(
    auth: AuthService, state_dir: Path, server: str, anchor: bytes
) -> Path:
    """Keep `<state-dir>/admin.json` usable: made on first start, its server
    address and CA refreshed later; left alone once its token was revoked."""
    path = state_dir / clientconfig.ADMIN_FILE
    existing: ClientConfig | None = None
    if path.exists():
        try:
            existing = clientconfig.load(path)
        except clientconfig.ConfigError as exc:
            log.warning("event=admin_credentials_unreadable error=%r", str(exc))
    secret = await auth.bootstrap_admin(existing.token if existing else None)
    token = secret or (existing.token if existing else "")
    try:
        auth.authenticate(token)
    except DomainError:
        log.warning("event=admin_credentials_revoked file=%s", path)
        return path
    fresh = ClientConfig(server, anchor.decode(), token)
    if fresh != existing:
        fresh.save(path)
        log.info("event=admin_credentials_written file=%s", path)
    return path


async def start(
    listen: str,
    db_path: str | Path,
    settings: Settings | None = None,
    security: SecurityConfig | None = None,
    *,
    store: Store | None = None,
    clock: Callable[[], datetime] = utcnow,
    data: DataSettings | None = None,
    metrics_listen: str = "",
    lease: LeaseSettings | None = None,
    advertise: str = "",
) -> ControlPlane:
    """Open the store, load state, register every service and start listening.

    With `security` (the default of the command line), the API is served
    with TLS and bearer tokens and agents connect on their own mTLS address;
    without it (`--insecure`), one plaintext address serves everything to
    everybody. Tests may hand in the `store` (say, one that injects faults)
    and the wall `clock`. With `data`, the embedded data plane (buffers'
    bytes) serves HTTP(S) on its own address; with `metrics_listen`,
    Prometheus metrics are served at http://HOST:PORT/metrics.

    Several control planes may share one PostgreSQL database: each competes
    for the lease (`lease`), and only the leader loads runs and acts; the
    lease names this one's API and agent addresses with the host
    `advertise` (default: the listen host, loopback for a wildcard)."""
    metrics = ControlPlaneMetrics() if metrics_listen else None
    parts = await build_control_plane(
        listen, db_path, settings, security,
        store=store, clock=clock, data=data, metrics=metrics, lease=lease,
    )  # fmt: skip
    port, agent_port = await _bind_all(parts, listen, security)
    await _claim_lease(parts, listen, port, agent_port, security, advertise)
    admin_file = None
    if parts.auth is not None and parts.tls is not None and security is not None:
        admin_file = await _admin_credentials(
            parts.auth, security.state_dir, client_address(listen, port), parts.tls.trust_anchor
        )
    plane = ControlPlane(
        parts.server, parts.store, parts.health, port, parts.orchestrator, None, agent_port,
        parts.auth, admin_file, parts.registries, parts.images, parts.retention, None,
        parts.buffers, None, parts.dataplane, parts.run_buffers, None, None, parts.leadership,
    )  # fmt: skip
    await _run(plane, parts, metrics, metrics_listen)
    log.info(
        "event=listening address=%s port=%d agent_port=%d secure=%s db=%s leader=%s epoch=%d",
        listen,
        port,
        agent_port,
        parts.auth is not None,
        db_path,
        parts.leadership.leading,
        parts.leadership.epoch,
    )
    return plane


async def _bind_all(
    parts: Assembly, listen: str, security: SecurityConfig | None
) -> tuple[int, int]:
    """Bind the API address (and with TLS the agents' own); on failure close what
    building opened. Returns the API port and the agent port (0 without TLS)."""
    server, tls = parts.server, parts.tls
    try:
        if tls is None or security is None:
            return _bind(server.add_insecure_port, listen), 0
        port = _bind(lambda a: server.add_secure_port(a, tls.api_credentials()), listen)
        agent_port = _bind(
            lambda a: server.add_secure_port(a, tls.agent_credentials()), security.agent_listen
        )
        parts.join_info.agent_port = agent_port
        return port, agent_port
    except OSError:
        await parts.close()
        raise


async def _claim_lease(
    parts: Assembly,
    listen: str,
    port: int,
    agent_port: int,
    security: SecurityConfig | None,
    advertise: str,
) -> None:
    """Name this control plane's addresses in the lease and compete once."""
    leadership = parts.leadership
    api_address = client_address(listen, port, advertise)
    agent_address = (
        api_address
        if security is None
        else client_address(security.agent_listen, agent_port, advertise)
    )
    leadership.me = Candidate(leadership.me.holder, api_address, agent_address)
    try:
        await leadership.round()
    except BaseException:
        await parts.close()
        raise


async def _run(
    plane: ControlPlane, parts: Assembly, metrics: ControlPlaneMetrics | None, metrics_listen: str
) -> None:
    """Take office if leading, start serving, start the background tasks, report healthy."""
    await plane.health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    if parts.leadership.leading:
        try:
            await plane.take_office()
        except BaseException:
            await plane.stand_down()
            await parts.close()
            raise
    await plane.server.start()
    plane.metrics = (
        await _serve_metrics(metrics, metrics_listen, plane.orchestrator) if metrics else None
    )
    plane.lease_task = asyncio.create_task(parts.leadership.run_forever(), name="lease")
    plane.office_task = asyncio.create_task(plane.follow(), name="office")
    for name in ["", *SERVICE_NAMES]:
        await plane.health.set(name, health_pb2.HealthCheckResponse.SERVING)


async def _serve_metrics(
    metrics: ControlPlaneMetrics, listen: str, orchestrator: Orchestrator
) -> MetricsEndpoint:
    metrics.watch(orchestrator)
    endpoint = MetricsEndpoint(metrics.registry)
    port = await endpoint.start(listen)
    log.info("event=metrics_listening port=%d", port)
    return endpoint


def _bind(add: Callable[[str], int], address: str) -> int:
    try:
        port = add(address)
    except RuntimeError:  # grpc's way of saying the address is taken or not local
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
    return port
