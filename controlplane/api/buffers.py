"""BufferService servicer: protobuf <-> buffer use cases, nothing more."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc

from controlplane.api.convert import timestamp
from controlplane.api.errors import grpc_errors
from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.errors import InvalidArgument
from controlplane.services.buffers import BufferService, DataPlaneUnavailable, Selection
from muster.v1 import buffer_pb2 as pb
from muster.v1 import buffer_pb2_grpc as pb_grpc


def buffer_to_pb(buffer: Buffer) -> pb.Buffer:
    """A record as the API shows it, with its ETag."""
    return pb.Buffer(
        id=buffer.id,
        created_at=timestamp(buffer.created_at),
        soft_deleted=buffer.soft_deleted,
        expires_at=timestamp(buffer.expires_at),
        tags=buffer.tags,
        etag=buffer.etag,
        location=buffer.location,
    )


def filter_from_pb(flt: pb.BufferFilter) -> BufferFilter:
    """The request's filter (an unset one selects every active buffer)."""
    return BufferFilter(dict(flt.tags), dict(flt.exclude_tags), flt.soft_deleted)


def data_plane_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """A missing or failing data plane is UNAVAILABLE with its one-line reason
    (inside `grpc_errors`, which maps the caller's mistakes)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except DataPlaneUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    return wrapper


class BufferServicer(pb_grpc.BufferServiceServicer):
    """Translates BufferService calls to the buffer use cases."""

    def __init__(self, service: BufferService) -> None:
        self._service = service

    @grpc_errors
    @data_plane_errors
    async def CreateBuffer(
        self, request: pb.CreateBufferRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateBufferResponse:
        buffer = await self._service.create(dict(request.tags), request.ttl_seconds)
        return pb.CreateBufferResponse(buffer=buffer_to_pb(buffer))

    @grpc_errors
    async def GetBuffer(
        self, request: pb.GetBufferRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBufferResponse:
        buffer = await self._service.get(request.id, soft_deleted=request.soft_deleted)
        return pb.GetBufferResponse(buffer=buffer_to_pb(buffer))

    @grpc_errors
    async def ListBuffers(
        self, request: pb.ListBuffersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBuffersResponse:
        items, token = await self._service.list(
            filter_from_pb(request.filter), size=request.page_size, token=request.page_token
        )
        return pb.ListBuffersResponse(
            buffers=[buffer_to_pb(b) for b in items], next_page_token=token
        )

    @grpc_errors
    async def CountBuffers(
        self, request: pb.CountBuffersRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountBuffersResponse:
        return pb.CountBuffersResponse(
            count=await self._service.count(filter_from_pb(request.filter))
        )

    @grpc_errors
    async def UpdateBuffer(
        self, request: pb.UpdateBufferRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateBufferResponse:
        buffer = await self._service.update(
            request.id,
            tags=dict(request.tags),
            clear_tags=request.clear_tags,
            ttl_seconds=request.ttl_seconds if request.HasField("ttl_seconds") else None,
            etag=request.etag,
        )
        return pb.UpdateBufferResponse(buffer=buffer_to_pb(buffer))

    @grpc_errors
    @data_plane_errors
    async def DeleteBuffers(
        self, request: pb.DeleteBuffersRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteBuffersResponse:
        flt = filter_from_pb(request.filter)
        selection = Selection(list(request.ids), flt, request.all)
        ttl = request.ttl_seconds if request.HasField("ttl_seconds") else None
        if request.purge:
            if ttl is not None:
                raise InvalidArgument("ttl_seconds", "a purge takes no TTL: it deletes at once")
            done = await self._service.purge(selection)
        else:
            if flt.soft_deleted:
                raise InvalidArgument(
                    "filter.soft_deleted",
                    "soft-deleted buffers cannot be deleted again; set purge to delete them now",
                )
            done = await self._service.delete(selection, ttl)
        return pb.DeleteBuffersResponse(buffers=[buffer_to_pb(b) for b in done])

    @grpc_errors
    async def RestoreBuffers(
        self, request: pb.RestoreBuffersRequest, context: grpc.aio.ServicerContext
    ) -> pb.RestoreBuffersResponse:
        selection = Selection(list(request.ids), BufferFilter(dict(request.tags)), request.all)
        done = await self._service.restore(selection)
        return pb.RestoreBuffersResponse(buffers=[buffer_to_pb(b) for b in done])

    @grpc_errors
    @data_plane_errors
    async def GetBufferAccess(
        self, request: pb.GetBufferAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBufferAccessResponse:
        access = await self._service.access(
            request.id, writable=request.writable, ttl_seconds=request.ttl_seconds
        )
        return pb.GetBufferAccessResponse(uri=access.uri, expires_at=timestamp(access.expires_at))
