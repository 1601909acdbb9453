"""One place that turns domain errors into gRPC status codes.

Bad input must never surface as UNKNOWN or INTERNAL, so every servicer method
is wrapped by `grpc_errors`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from controlplane.core.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

_CODES: list[tuple[type[DomainError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def status_code(error: DomainError) -> grpc.StatusCode:
    """The gRPC code for a domain error."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


async def _abort(context: grpc.aio.ServicerContext, name: str, error: DomainError) -> None:
    code = status_code(error)
    log.info("event=rpc_rejected method=%s code=%s detail=%r", name, code.name, str(error))
    await context.abort(code, str(error))


async def _unavailable(
    context: grpc.aio.ServicerContext, name: str, error: StoreUnavailable
) -> None:
    log.error("event=store_unavailable method=%s error=%r", name, str(error))
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, f"the control plane's store is unavailable ({error}); retry"
    )


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a unary or server-streaming servicer method."""
    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except DomainError as error:
                await _abort(context, name, error)
            except StoreUnavailable as error:
                await _unavailable(context, name, error)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except DomainError as error:
            await _abort(context, name, error)
        except StoreUnavailable as error:
            await _unavailable(context, name, error)

    return unary
