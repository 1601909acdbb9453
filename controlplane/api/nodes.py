"""NodeService servicer."""

from __future__ import annotations

import grpc

from controlplane.api.convert import node_to_pb
from controlplane.api.errors import grpc_errors
from controlplane.services.orchestrator import Orchestrator
from muster.v1 import node_pb2 as pb
from muster.v1 import node_pb2_grpc as pb_grpc


class NodeServicer(pb_grpc.NodeServiceServicer):
    """Lists nodes with their liveness and allocation."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    @grpc_errors
    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(
            nodes=[
                node_to_pb(node, allocated, count)
                for node, allocated, count in self._orchestrator.nodes()
                if not request.pool or request.pool in node.pools
            ]
        )
