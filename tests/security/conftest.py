"""A secure control plane in this process, and a hand-driven node agent.

The agent here speaks the Connect protocol directly (Register, statuses, log
batches) so that tests can make it lie: claim another node's name, report on
replicas placed elsewhere, ship lines for runs it does not hold."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.security.tls import SecurityConfig
from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings
from muster.common.pki import key_pem, new_key, node_csr
from muster.v1 import agent_pb2 as apb
from muster.v1 import agent_pb2_grpc as agrpc
from muster.v1 import auth_pb2 as tpb
from muster.v1 import auth_pb2_grpc as tgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc

SETTINGS = Settings(heartbeat_interval=timedelta(seconds=1))


@dataclass
class Secure:
    """A secure control plane and the admin's credentials."""

    plane: ControlPlane
    state: Path
    ca: bytes
    admin_token: str

    @property
    def api(self) -> str:
        return f"127.0.0.1:{self.plane.port}"

    @property
    def agents(self) -> str:
        return f"127.0.0.1:{self.plane.agent_port}"

    def channel(self, token: str | None = None) -> grpc.aio.Channel:
        """TLS to the API, with `token` (the admin's by default; '' for none)."""
        creds = grpc.ssl_channel_credentials(self.ca)
        token = self.admin_token if token is None else token
        if token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(token)
            )
        return grpc.aio.secure_channel(self.api, creds)

    async def token(self, name: str, role: str, ttl: int = 0) -> str:
        async with self.channel() as ch:
            reply = await tgrpc.TokenServiceStub(ch).CreateToken(
                tpb.CreateTokenRequest(
                    name=name, role=tpb.Role.Value(f"ROLE_{role.upper()}"), ttl_seconds=ttl
                )
            )
        return reply.secret

    async def join_token(self, *pools: str, ttl: int = 0) -> str:
        async with self.channel() as ch:
            reply = await ngrpc.NodeServiceStub(ch).CreateJoinToken(
                npb.CreateJoinTokenRequest(pools=list(pools), ttl_seconds=ttl)
            )
        return reply.join_token

    async def join(self, node: str, token: str) -> NodeIdentity:
        """Join as `node`; the key never leaves this process, as in the agent."""
        key = new_key()
        async with grpc.aio.secure_channel(self.api, grpc.ssl_channel_credentials(self.ca)) as ch:
            reply = await agrpc.AgentServiceStub(ch).Join(
                apb.JoinRequest(
                    join_token=token, node_name=node, csr_pem=node_csr(key, node).decode()
                )
            )
        return NodeIdentity(node, key_pem(key), reply.certificate_pem.encode(), reply)

    def node_channel(self, ident: NodeIdentity) -> grpc.aio.Channel:
        """mTLS to the agent address with a node certificate."""
        return grpc.aio.secure_channel(
            self.agents, grpc.ssl_channel_credentials(self.ca, ident.key, ident.cert)
        )


@dataclass
class NodeIdentity:
    """A joined node's key and certificate."""

    name: str
    key: bytes
    cert: bytes
    reply: apb.JoinResponse


@dataclass
class FakeAgent:
    """One Connect stream driven by the test."""

    call: grpc.aio.StreamStreamCall
    outbox: asyncio.Queue[apb.ConnectRequest | None]
    received: list[apb.ConnectResponse] = field(default_factory=list)

    def send(self, **message: object) -> None:
        self.outbox.put_nowait(apb.ConnectRequest(**message))  # type: ignore[arg-type]

    async def next(self, kind: str, within: float = 10) -> apb.ConnectResponse:
        """The next message of `kind` from the control plane."""

        async def read() -> apb.ConnectResponse:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    raise AssertionError(f"stream ended while waiting for {kind}")
                self.received.append(msg)
                if msg.WhichOneof("message") == kind:
                    return msg

        return await asyncio.wait_for(read(), within)


async def connect(
    channel: grpc.aio.Channel, name: str, pools: list[str], **register: object
) -> FakeAgent:
    """Open Connect and send Register (not waiting for the answer)."""
    outbox: asyncio.Queue[apb.ConnectRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[apb.ConnectRequest]:
        while (msg := await outbox.get()) is not None:
            yield msg

    call = agrpc.AgentServiceStub(channel).Connect(requests())
    agent = FakeAgent(call, outbox)
    agent.send(
        register=apb.Register(
            node_name=name,
            pools=pools,
            allocatable=npb.Capacity(cpu_millis=4000, memory_bytes=2**33),
            **register,  # type: ignore[arg-type]
        )
    )
    return agent


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[Secure]:
    state = tmp_path / "state"
    plane = await start(
        "127.0.0.1:0",
        tmp_path / "cp.db",
        SETTINGS,
        SecurityConfig(state_dir=state, agent_listen="127.0.0.1:0"),
    )
    admin = json.loads((state / "admin.json").read_text())
    try:
        yield Secure(plane, state, admin["caCert"].encode(), admin["token"])
    finally:
        await plane.stop(grace=0.2)
