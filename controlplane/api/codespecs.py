"""CodespecService servicer."""

from __future__ import annotations

import grpc

from controlplane.api.convert import codespec_from_pb, codespec_to_pb
from controlplane.api.errors import grpc_errors
from controlplane.core.errors import InvalidArgument
from controlplane.services.codespecs import CodespecService
from controlplane.store.base import CodespecOrder
from muster.v1 import codespec_pb2 as pb
from muster.v1 import codespec_pb2_grpc as pb_grpc

_ORDERS: dict[int, CodespecOrder] = {
    pb.CODESPEC_ORDER_UNSPECIFIED: "newest",
    pb.CODESPEC_ORDER_NEWEST_FIRST: "newest",
    pb.CODESPEC_ORDER_NAME: "name",
}


class CodespecServicer(pb_grpc.CodespecServiceServicer):
    """Translates CodespecService calls to the codespec use cases."""

    def __init__(self, service: CodespecService) -> None:
        self._service = service

    @grpc_errors
    async def CreateCodespec(
        self, request: pb.CreateCodespecRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCodespecResponse:
        if not request.HasField("codespec"):
            raise InvalidArgument("codespec", "a codespec is required")
        stored, created = await self._service.create(codespec_from_pb(request.codespec))
        return pb.CreateCodespecResponse(codespec=codespec_to_pb(stored), created=created)

    @grpc_errors
    async def GetCodespec(
        self, request: pb.GetCodespecRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCodespecResponse:
        if request.version < 0:
            raise InvalidArgument("version", "versions start at 1")
        spec = await self._service.get(request.name, request.version or None)
        return pb.GetCodespecResponse(codespec=codespec_to_pb(spec))

    @grpc_errors
    async def ListCodespecs(
        self, request: pb.ListCodespecsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCodespecsResponse:
        order = _ORDERS.get(request.order)
        if order is None:
            raise InvalidArgument("order", f"unknown order {request.order}")
        items, token = await self._service.list(
            prefix=request.prefix,
            order=order,
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListCodespecsResponse(
            codespecs=[codespec_to_pb(s) for s in items], next_page_token=token
        )
