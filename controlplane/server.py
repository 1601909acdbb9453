"""Assembles the control plane: store, services, gRPC servicers, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.agents import AgentServicer
from controlplane.api.codespecs import CodespecServicer
from controlplane.api.nodes import NodeServicer
from controlplane.api.runs import RunServicer
from controlplane.services.codespecs import CodespecService
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator, Settings
from controlplane.store.base import Store
from controlplane.store.sqlite import SqliteStore
from muster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    codespec_pb2,
    codespec_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    run_pb2,
    run_pb2_grpc,
)

log = logging.getLogger(__name__)

# Agents send keepalive pings (every 10 s, even with no call in flight) so a
# dead connection is noticed in seconds, not after TCP's ~15 minutes; the
# server must accept them instead of closing the connection as abusive.
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
]

SERVICE_NAMES = [
    codespec_pb2.DESCRIPTOR.services_by_name["CodespecService"].full_name,
    run_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
]


@dataclass
class ControlPlane:
    """A running control plane; `port` is the bound port (useful with port 0)."""

    server: grpc.aio.Server
    store: Store
    health: health.aio.HealthServicer
    port: int
    orchestrator: Orchestrator
    loop_task: asyncio.Task[None]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let running ones finish, then close the store."""
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        self.loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.loop_task
        await self.store.close()
        log.info("event=stopped")


async def start(listen: str, db_path: str | Path, settings: Settings | None = None) -> ControlPlane:
    """Open the store, load state, register every service and start listening."""
    store = await SqliteStore.open(db_path)
    codespecs = CodespecService(store)
    orchestrator = Orchestrator(store, codespecs, settings)
    await orchestrator.load()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    codespec_pb2_grpc.add_CodespecServiceServicer_to_server(CodespecServicer(codespecs), server)
    logs = LogService(store, orchestrator)
    run_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(orchestrator, store, logs), server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(orchestrator), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(orchestrator, logs), server)

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
    port = server.add_insecure_port(listen)
    if port == 0:
        await store.close()
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    loop_task = asyncio.create_task(orchestrator.run_forever(), name="reconcile")
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("event=listening address=%s port=%d db=%s", listen, port, db_path)
    return ControlPlane(server, store, health_servicer, port, orchestrator, loop_task)
