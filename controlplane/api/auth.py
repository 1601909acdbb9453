"""The one gate every call passes: authentication and the method policy.

A server interceptor looks up the method in `core.auth.POLICY`. Bearer-token
methods are checked before the servicer runs (UNAUTHENTICATED without a valid
token, PERMISSION_DENIED when its role is too low). Node methods are wrapped so
that the peer's verified certificate is checked first; the node it names is
then available to the servicer through `current_node()`. A method not in the
policy is refused to everybody. With security off (`--insecure`), every
call passes and `current_node()` is None.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc

from controlplane.api.errors import status_code
from controlplane.core.auth import JOIN, NODE, PUBLIC, Principal, Role, requirement
from controlplane.core.errors import DomainError, PermissionDenied, Unauthenticated
from controlplane.services.auth import AuthService
from muster.common.pki import NodeCert

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
"""A servicer method's gRPC handler, whatever its messages."""
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
"""What an interceptor calls for the handler of a call (None: no such method)."""

log = logging.getLogger(__name__)

_node: contextvars.ContextVar[NodeCert | None] = contextvars.ContextVar("node", default=None)
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_node() -> NodeCert | None:
    """The verified node certificate of the call being served (None when security is off)."""
    return _node.get()


def current_principal() -> Principal | None:
    """The token holder of the call being served (None when security is off)."""
    return _principal.get()


def bearer(metadata: Any) -> str:
    """The secret of an `authorization: Bearer <secret>` header, or ''."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, secret = text.partition(" ")
            return secret.strip() if scheme.lower() == "bearer" else ""
    return ""


def _refusal(handler: grpc.RpcMethodHandler, error: DomainError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only aborts with `error`."""
    code, detail = status_code(error), str(error)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, detail)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, detail)
        yield  # pragma: no cover  (makes this an async generator)

    return same_shape(handler, unary, stream)


def same_shape(
    handler: grpc.RpcMethodHandler,
    unary: Callable[..., Awaitable[Any]],
    stream: Callable[..., Any],
) -> grpc.RpcMethodHandler:
    """A new handler with `handler`'s (de)serializers and streaming shape."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(stream, **codecs)


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The servicer function behind a handler, whatever its shape."""
    return cast(
        Callable[..., Any],
        handler.unary_unary
        or handler.unary_stream
        or handler.stream_unary
        or handler.stream_stream,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces `core.auth.POLICY` on every call (`auth` None: security off)."""

    def __init__(self, auth: AuthService | None) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or self._auth is None:
            return handler
        need = requirement(details.method)
        if need in (PUBLIC, JOIN):
            return handler
        secret = bearer(details.invocation_metadata)
        if need is None:
            return self._refuse(details, handler, PermissionDenied("this method is not allowed"))
        if need == NODE:
            return self._node_gate(details, handler, bool(secret))
        try:
            principal = self._auth.authenticate(secret) if secret else None
        except Unauthenticated as error:
            return self._refuse(details, handler, error)
        if principal is None:
            return self._refuse(
                details,
                handler,
                Unauthenticated(
                    "this call needs a token (authorization: Bearer ...); run `muster login` "
                    "or set MUSTER_CONFIG"
                ),
            )
        assert isinstance(need, Role)
        if principal.role is None or principal.role < need:
            have = principal.role.label if principal.role else "none"
            return self._refuse(
                details,
                handler,
                PermissionDenied(
                    f"the token '{principal.name}' has role {have}; "
                    f"{details.method.rsplit('/', 1)[-1]} needs role {need.label} or higher"
                ),
            )
        return self._with_principal(handler, principal, secret)

    @staticmethod
    def _refuse(
        details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler, error: DomainError
    ) -> grpc.RpcMethodHandler:
        log.info(
            "event=call_refused method=%s code=%s detail=%r",
            details.method,
            status_code(error).name,
            str(error),
        )
        return _refusal(handler, error)

    def _with_principal(
        self, handler: grpc.RpcMethodHandler, principal: Principal, secret: str
    ) -> grpc.RpcMethodHandler:
        """Make the caller known to the servicer; a long stream (watch, logs -f)
        re-checks the token before each message, so revocation and expiry end it."""
        behavior = behavior_of(handler)
        auth = self._auth
        assert auth is not None

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _principal.set(principal)
            return await behavior(request, context)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _principal.set(principal)
            async for item in behavior(request, context):
                try:
                    auth.authenticate(secret)
                except Unauthenticated as error:
                    await context.abort(status_code(error), str(error))
                yield item

        return same_shape(handler, unary, stream)

    def _node_gate(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler, has_token: bool
    ) -> grpc.RpcMethodHandler:
        auth = self._auth
        assert auth is not None
        behavior = behavior_of(handler)

        async def check(context: grpc.aio.ServicerContext) -> None:
            pem = next(iter(context.auth_context().get("x509_pem_cert") or ()), b"")
            try:
                if not pem and has_token:
                    raise PermissionDenied(
                        f"{details.method.rsplit('/', 1)[-1]} is only for node agents with a "
                        "node certificate; bearer tokens are not accepted"
                    )
                _node.set(await auth.check_node_cert(pem))
            except DomainError as error:
                log.warning(
                    "event=node_refused method=%s code=%s detail=%r peer=%s",
                    details.method,
                    status_code(error).name,
                    str(error),
                    context.peer(),
                )
                await context.abort(status_code(error), str(error))

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await behavior(request, context)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            async for item in behavior(request, context):
                yield item

        return same_shape(handler, unary, stream)
