"""The leader gate: a follower answers reads from the database and refuses
everything else with UNAVAILABLE, naming the leader (docs/ha.md).

The refusal's message says where the leader is, and its trailing metadata
carries the leader's addresses (`muster-leader-api`, `muster-leader-agent`)
for clients that follow it (the CLI and the agents do). A refused call did
nothing, so any client may send it again to the leader. Methods not listed as
follower reads are leader-only: a new method is safe by default.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.auth import Continuation, Handler, same_shape
from controlplane.services.leadership import Leadership
from muster.common.leaders import LEADER_AGENT_KEY, LEADER_API_KEY

_V1 = "/muster.v1."
FOLLOWER_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        _V1 + "CodespecService/GetCodespec",
        _V1 + "CodespecService/ListCodespecs",
        _V1 + "RunService/GetRun",
        _V1 + "RunService/ListRuns",
        _V1 + "RunService/CountRuns",
        _V1 + "TokenService/WhoAmI",
        _V1 + "TokenService/ListTokens",
        _V1 + "BufferService/GetBuffer",
        _V1 + "BufferService/ListBuffers",
        _V1 + "BufferService/CountBuffers",
        # A renewal signs with the shared CA and checks removal in the store:
        # any control plane can. Join is leader-only: it refuses a name that is
        # already a node, and only the leader holds the nodes (issue 8); the
        # agent follows the refusal's hint to the leader.
        _V1 + "AgentService/RenewCertificate",
    }
)
"""What a follower answers itself: reads served straight from the database
(node lists, watches and log streams need the leader's memory)."""


class LeaderGate(grpc.aio.ServerInterceptor):
    """Lets every call through on the leader, and only FOLLOWER_METHODS elsewhere."""

    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership

    async def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method in FOLLOWER_METHODS:
            return handler
        if self._leadership.serving():
            return handler
        return self._refusal(handler)

    def _refusal(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        leadership = self._leadership
        detail = f"this control plane is not the leader: {leadership.hint()}"
        lease = leadership.leader
        known = lease is not None and lease.holder != leadership.me.holder and lease.api_address
        metadata: tuple[tuple[str, str], ...] = ()
        if known and lease is not None:
            metadata = (
                (LEADER_API_KEY, lease.api_address),
                (LEADER_AGENT_KEY, lease.agent_address),
            )

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, detail, metadata)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, detail, metadata)
            yield  # pragma: no cover  (makes this an async generator)

        return same_shape(handler, unary, stream)
