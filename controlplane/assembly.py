"""Assembles the control plane: store, services, gRPC servicers, health and
reflection, wired but not yet listening (`controlplane.server` runs it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.agent_traffic import AgentTraffic
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
from controlplane.store.factory import open_store, parse_store_url, store_directory
from muster.common.limits import SERVER_MAX_RECEIVE_BYTES
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


def client_address(listen: str, port: int, advertise: str = "") -> str:
    """How a client reaches `listen`: at the `advertise` host if given,
    otherwise as a client on this machine does (wildcards become loopback)."""
    host = advertise or host_of(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    public = data.advertise or host_of(client_address(data.listen, int(port or 0)))
    await plane.start(host.strip("[]"), int(port), public_host=public)
    return plane


@dataclass
class Assembly:
    """A control plane wired but not yet listening (see `build_control_plane`)."""

    server: grpc.aio.Server
    store: Store
    health: health.aio.HealthServicer
    orchestrator: Orchestrator
    auth: AuthService | None
    registries: RegistryService
    images: ImageService
    retention: Retention
    buffers: BufferService
    dataplane: DataPlane | None
    run_buffers: RunBuffers
    leadership: Leadership
    join_info: JoinInfo
    tls: TlsMaterial | None
    traffic: AgentTraffic
    """Messages on the agents' streams, counted (see api/agent_traffic.py)."""

    async def close(self) -> None:
        """Undo what building opened: the data plane, then the store."""
        if self.dataplane is not None:
            await self.dataplane.stop()
        await self.store.close()


async def build_control_plane(
    listen: str,
    db_path: str | Path,
    settings: Settings | None = None,
    security: SecurityConfig | None = None,
    *,
    store: Store | None = None,
    clock: Callable[[], datetime] = utcnow,
    data: DataSettings | None = None,
    metrics: ControlPlaneMetrics | None = None,
    lease: LeaseSettings | None = None,
) -> Assembly:
    """Open the store and wire services, servicers and interceptors into a gRPC
    server that listens nowhere yet (the data plane, which buffers need, does
    start). `start` binds it, claims the lease and runs it."""
    store = store or await open_store(db_path)
    store = metrics.timed_store(store) if metrics is not None else store
    codespecs = CodespecService(store, clock)
    registries = RegistryService(
        store,
        Sealer(registry_key_path(db_path, security)),
        refuse_logins=registry_key_missing(db_path, security),
    )
    await registries.load()
    tls: TlsMaterial | None = None
    if security is not None:
        names = [listen, security.agent_listen, *(data.addresses() if data else [])]
        tls = await asyncio.to_thread(load_material, security, names)
    dataplane = await _start_dataplane(data, tls) if data is not None else None
    buffers = BufferService(store, dataplane, clock)  # without a data plane: UNAVAILABLE
    # Job containers trust the data plane's certificate through the cluster CA.
    run_buffers = RunBuffers(buffers, tls.trust_anchor.decode() if tls and dataplane else "")
    logins = lambda: registries.logins  # noqa: E731 (read at each use: logins change)
    orchestrator = Orchestrator(store, codespecs, settings, clock, logins, run_buffers=run_buffers)
    await orchestrator.cluster()
    images = ImageService(orchestrator, logins)
    auth: AuthService | None = None
    if security is not None and tls is not None:
        auth = AuthService(store, tls.ca)
        await auth.load()
    leadership = Leadership(store, Candidate(new_holder(), "", ""), lease)
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(auth), LeaderGate(leadership)]
    traffic = AgentTraffic()
    if metrics is not None:
        interceptors.insert(0, MetricsInterceptor(metrics))
        metrics.count_traffic(traffic)
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    join_info = JoinInfo(ca_pem=tls.trust_anchor if tls else b"")
    retention = Retention(store, retention_settings(orchestrator.settings), clock)
    parts = Assembly(
        server, store, _add_health(server), orchestrator, auth, registries, images, retention,
        buffers, dataplane, run_buffers, leadership, join_info, tls, traffic,
    )  # fmt: skip
    _add_servicers(parts, codespecs)
    return parts


def _add_servicers(parts: Assembly, codespecs: CodespecService) -> None:
    """Register every muster service on the server."""
    server, orchestrator, auth = parts.server, parts.orchestrator, parts.auth
    codespec_pb2_grpc.add_CodespecServiceServicer_to_server(CodespecServicer(codespecs), server)
    logs = LogService(parts.store, orchestrator)
    streams = StreamLimits(
        orchestrator.settings.max_streams, orchestrator.settings.max_watchers_per_run
    )
    run_pb2_grpc.add_RunServiceServicer_to_server(
        RunServicer(orchestrator, RunQueries(parts.store), logs, streams), server
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(orchestrator, auth), server)
    agents = AgentServicer(
        orchestrator, logs, auth, parts.join_info, parts.images, parts.leadership, parts.traffic
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agents, server)
    auth_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(auth), server)
    image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(parts.images), server)
    registries = RegistryServicer(parts.registries)
    image_pb2_grpc.add_RegistryServiceServicer_to_server(registries, server)
    buffer_pb2_grpc.add_BufferServiceServicer_to_server(BufferServicer(parts.buffers), server)


def _add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """The health service and reflection over every service."""
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
    return health_servicer


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


def registry_key_missing(db_path: str | Path, security: SecurityConfig | None) -> str | None:
    """Why `registry login` is refused, or None: a store that outlives the
    control plane (PostgreSQL) with no file for the key (--insecure has no state
    directory) would keep logins that no control plane can open after a restart,
    nor any other control plane of the database ever."""
    if registry_key_path(db_path, security) is not None:
        return None
    try:
        kind = parse_store_url(str(db_path)).kind
    except ValueError:
        return None
    if kind != "postgresql":
        return None  # memory: the logins go with the store
    return (
        f"registry logins need a key file ({KEY_FILE}) that outlives this control plane, "
        "and with --insecure and a PostgreSQL store there is none: a login's sealed password "
        "could not be opened after a restart, nor by another control plane; run the control "
        "planes without --insecure (the key then lives in --state-dir, shared by them), "
        "or give the agents --registry-auth-file"
    )
