"""NodeService servicer."""

from __future__ import annotations

import grpc

from controlplane.api.convert import node_to_pb, timestamp
from controlplane.api.errors import grpc_errors
from controlplane.core.auth import DEFAULT_JOIN_TTL, ttl_of
from controlplane.core.errors import FailedPrecondition
from controlplane.services.auth import AuthService
from controlplane.services.orchestrator import Orchestrator
from muster.v1 import node_pb2 as pb
from muster.v1 import node_pb2_grpc as pb_grpc


class NodeServicer(pb_grpc.NodeServiceServicer):
    """Lists nodes with their liveness and allocation; joins, cordons, drains and removes them."""

    def __init__(self, orchestrator: Orchestrator, auth: AuthService | None = None) -> None:
        self._orchestrator = orchestrator
        self._auth = auth

    @grpc_errors
    async def CreateJoinToken(
        self, request: pb.CreateJoinTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateJoinTokenResponse:
        if self._auth is None:
            raise FailedPrecondition(
                "this control plane runs with --insecure: agents connect without joining"
            )
        ttl = ttl_of(request.ttl_seconds, "ttl_seconds", DEFAULT_JOIN_TTL)
        secret, token = await self._auth.create_join_token(list(request.pools), ttl)
        return pb.CreateJoinTokenResponse(
            join_token=secret, expires_at=timestamp(token.expires_at), pools=list(token.pools)
        )

    @grpc_errors
    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveNodeResponse:
        failed = await self._orchestrator.remove_node(request.name)
        return pb.RemoveNodeResponse(failed_run_ids=failed)

    @grpc_errors
    async def CordonNode(
        self, request: pb.CordonNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.CordonNodeResponse:
        return pb.CordonNodeResponse(
            node=node_to_pb(*await self._orchestrator.cordon_node(request.name))
        )

    @grpc_errors
    async def UncordonNode(
        self, request: pb.UncordonNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.UncordonNodeResponse:
        return pb.UncordonNodeResponse(
            node=node_to_pb(*await self._orchestrator.uncordon_node(request.name))
        )

    @grpc_errors
    async def DrainNode(
        self, request: pb.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainNodeResponse:
        deadline = ttl_of(request.deadline_seconds, "deadline_seconds", None)
        return pb.DrainNodeResponse(
            node=node_to_pb(*await self._orchestrator.drain_node(request.name, deadline))
        )

    @grpc_errors
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        in_use = self._orchestrator.gpus_in_use()
        return pb.ListNodesResponse(
            nodes=[
                node_to_pb(node, allocated, count, in_use.get(node.name, ()))
                for node, allocated, count in self._orchestrator.nodes()
                if not request.pool or request.pool in node.pools
            ]
        )
