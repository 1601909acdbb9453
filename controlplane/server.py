"""Assembles the control plane: store, services, gRPC servicers, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.agents import AgentServicer, JoinInfo
from controlplane.api.auth import AuthInterceptor
from controlplane.api.buffers import BufferServicer
from controlplane.api.codespecs import CodespecServicer
from controlplane.api.images import ImageServicer, RegistryServicer
from controlplane.api.leader import LeaderGate
from controlplane.api.metrics import ControlPlaneMetrics, MetricsInterceptor
from controlplane.api.nodes import NodeServicer
from controlplane.api.runs import RunServicer
from controlplane.api.tokens import TokenServicer
from controlplane.core.errors import DomainError, StoreUnavailable
from controlplane.dataplane.sas import load_or_create_key
from controlplane.dataplane.server import DataPlane
from controlplane.security.sealing import KEY_FILE, Sealer
from controlplane.security.tls import SecurityConfig, TlsMaterial, load_material
from controlplane.services.auth import AuthService
from controlplane.services.buffers import BufferService
from controlplane.services.codespecs import CodespecService, utcnow
from controlplane.services.images import ImageService
from controlplane.services.leadership import Candidate, Leadership, LeaseSettings, new_holder
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator, Settings
from controlplane.services.registries import RegistryService
from controlplane.services.retention import Retention, RetentionSettings
from controlplane.services.run_buffers import RunBuffers
from controlplane.services.runs import RunQueries
from controlplane.services.streams import StreamLimits
from controlplane.store.base import Store
from controlplane.store.factory import open_store, store_directory
from muster.common import clientconfig
from muster.common.clientconfig import ClientConfig
from muster.common.limits import SERVER_MAX_RECEIVE_BYTES
from muster.common.metrics import MetricsEndpoint
from muster.common.net import host_of
from muster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    buffer_pb2,
    buffer_pb2_grpc,
    codespec_pb2,
    codespec_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    run_pb2,
    run_pb2_grpc,
)

log = logging.getLogger(__name__)
LEADER_HEALTH = "muster-leader"
"""Health service name that is SERVING only on the leader (for load balancers and checks)."""

# Agents send keepalive pings (every 10 s, even with no call in flight) so a
# dead connection is noticed in seconds, not after TCP's ~15 minutes; the
# server must accept them instead of closing the connection as abusive.
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
    # Whatever an agent may send (muster/common/limits.py), with room.
    ("grpc.max_receive_message_length", SERVER_MAX_RECEIVE_BYTES),
]

SERVICE_NAMES = [
    codespec_pb2.DESCRIPTOR.services_by_name["CodespecService"].full_name,
    run_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    image_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    buffer_pb2.DESCRIPTOR.services_by_name["BufferService"].full_name,
]


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


def _client_address(listen: str, port: int, advertise: str = "") -> str:
    """How a client reaches `listen`: at the `advertise` host if given,
    otherwise as a client on this machine does (wildcards become loopback)."""
    host = advertise or host_of(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    store = store or await open_store(db_path)
    if metrics is not None:
        store = metrics.timed_store(store)
    codespecs = CodespecService(store, clock)
    registries = RegistryService(store, Sealer(registry_key_path(db_path, security)))
    await registries.load()
    tls: TlsMaterial | None = None
    if security is not None:
        names = [listen, security.agent_listen, *(data.addresses() if data else [])]
        tls = await asyncio.to_thread(load_material, security, names)
    dataplane = await _start_dataplane(data, tls) if data is not None else None
    buffers = BufferService(store, dataplane, clock)  # without a data plane: UNAVAILABLE
    # Job containers trust the data plane's certificate through the cluster CA.
    run_buffers = RunBuffers(buffers, tls.trust_anchor.decode() if tls and dataplane else "")
    orchestrator = Orchestrator(
        store,
        codespecs,
        settings,
        clock,
        credentials=lambda: registries.logins,
        run_buffers=run_buffers,
    )
    await orchestrator.cluster()
    images = ImageService(orchestrator, lambda: registries.logins)
    auth: AuthService | None = None
    if security is not None and tls is not None:
        auth = AuthService(store, tls.ca)
        await auth.load()
    leadership = Leadership(store, Candidate(new_holder(), "", ""), lease)
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(auth), LeaderGate(leadership)]
    if metrics is not None:
        interceptors.insert(0, MetricsInterceptor(metrics))
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    codespec_pb2_grpc.add_CodespecServiceServicer_to_server(CodespecServicer(codespecs), server)
    logs = LogService(store, orchestrator)
    streams = StreamLimits(
        orchestrator.settings.max_streams, orchestrator.settings.max_watchers_per_run
    )
    run_pb2_grpc.add_RunServiceServicer_to_server(
        RunServicer(orchestrator, RunQueries(store), logs, streams), server
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(orchestrator, auth), server)
    join_info = JoinInfo(ca_pem=tls.trust_anchor if tls else b"")
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentServicer(orchestrator, logs, auth, join_info, images, leadership), server
    )
    auth_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(auth), server)
    image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(images), server)
    image_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registries), server)
    buffer_pb2_grpc.add_BufferServiceServicer_to_server(BufferServicer(buffers), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        if tls is None or security is None:
            port, agent_port = _bind(server.add_insecure_port, listen), 0
        else:
            port = _bind(lambda a: server.add_secure_port(a, tls.api_credentials()), listen)
            agent_port = _bind(
                lambda a: server.add_secure_port(a, tls.agent_credentials()), security.agent_listen
            )
            join_info.agent_port = agent_port
    except OSError:
        if dataplane is not None:
            await dataplane.stop()
        await store.close()
        raise
    api_address = _client_address(listen, port, advertise)
    agent_address = (
        api_address
        if security is None
        else _client_address(security.agent_listen, agent_port, advertise)
    )
    leadership.me = Candidate(leadership.me.holder, api_address, agent_address)
    try:
        await leadership.round()
    except BaseException:
        if dataplane is not None:
            await dataplane.stop()
        await store.close()
        raise
    admin_file = None
    if auth is not None and tls is not None and security is not None:
        admin_file = await _admin_credentials(
            auth, security.state_dir, _client_address(listen, port), tls.trust_anchor
        )
    retention = Retention(store, retention_settings(orchestrator.settings), clock)
    plane = ControlPlane(
        server,
        store,
        health_servicer,
        port,
        orchestrator,
        None,
        agent_port,
        auth,
        admin_file,
        registries,
        images,
        retention,
        None,
        buffers,
        None,
        dataplane,
        run_buffers,
        None,
        None,
        leadership,
    )
    await health_servicer.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
    if leadership.leading:
        try:
            await plane.take_office()
        except BaseException:
            await plane.stand_down()
            if dataplane is not None:
                await dataplane.stop()
            await store.close()
            raise
    await server.start()
    plane.metrics = await _serve_metrics(metrics, metrics_listen, orchestrator) if metrics else None
    plane.lease_task = asyncio.create_task(leadership.run_forever(), name="lease")
    plane.office_task = asyncio.create_task(plane.follow(), name="office")
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "event=listening address=%s port=%d agent_port=%d secure=%s db=%s leader=%s epoch=%d",
        listen,
        port,
        agent_port,
        auth is not None,
        db_path,
        leadership.leading,
        leadership.epoch,
    )
    return plane


async def _serve_metrics(
    metrics: ControlPlaneMetrics, listen: str, orchestrator: Orchestrator
) -> MetricsEndpoint:
    metrics.watch(orchestrator)
    endpoint = MetricsEndpoint(metrics.registry)
    port = await endpoint.start(listen)
    log.info("event=metrics_listening port=%d", port)
    return endpoint


@dataclass(frozen=True)
class DataSettings:
    """Where the embedded data plane listens, keeps its blobs and its key."""

    listen: str  # HOST:PORT (port 0: any free one)
    root: Path  # the blobs (one folder per buffer)
    key_file: Path  # the key that signs access URLs
    advertise: str = ""  # the host put in access URLs; default: the listen host

    def addresses(self) -> list[str]:
        """Names the TLS certificate must also hold."""
        return [self.listen, *([f"{self.advertise}:0"] if self.advertise else [])]


async def _start_dataplane(data: DataSettings, tls: TlsMaterial | None) -> DataPlane:
    """Open the blob store and listen; access URLs name the advertised host
    (a wildcard listen address is advertised as loopback unless told otherwise)."""
    key = await asyncio.to_thread(load_or_create_key, data.key_file)
    context = tls.ssl_context() if tls is not None else None
    plane = DataPlane(data.root, key, ssl_context=context)
    host, _, port = data.listen.rpartition(":")
    public = data.advertise or host_of(_client_address(data.listen, int(port or 0)))
    await plane.start(host.strip("[]"), int(port), public_host=public)
    return plane


def retention_settings(settings: Settings) -> RetentionSettings:
    """--retain-finished and --max-log-bytes-per-run (0: forever, no cap)."""
    return RetentionSettings(
        retain_finished=settings.retain_finished or None,
        max_log_bytes=settings.max_log_bytes_per_run or None,
    )


def registry_key_path(db_path: str | Path, security: SecurityConfig | None) -> Path | None:
    """Where the key that seals registry passwords lives: the state directory
    (beside the CA); with --insecure, which has none, beside a SQLite file;
    nowhere (memory only) for a store without a file (memory, PostgreSQL)."""
    if security is not None:
        return security.state_dir / KEY_FILE
    directory = store_directory(db_path)
    return None if directory is None else directory / KEY_FILE


def _bind(add: Callable[[str], int], address: str) -> int:
    try:
        port = add(address)
    except RuntimeError:  # grpc's way of saying the address is taken or not local
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
    return port
