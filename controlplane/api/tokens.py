"""TokenService servicer: bearer tokens for people and programs."""

from __future__ import annotations

import grpc

from controlplane.api.auth import current_principal
from controlplane.api.convert import timestamp
from controlplane.api.errors import grpc_errors
from controlplane.core.auth import ApiToken, Role, ttl_of
from controlplane.core.errors import FailedPrecondition, InvalidArgument
from controlplane.services.auth import AuthService
from muster.v1 import auth_pb2 as pb
from muster.v1 import auth_pb2_grpc as pb_grpc

_ROLE_TO_PB = {
    Role.READER: pb.ROLE_READER,
    Role.USER: pb.ROLE_USER,
    Role.ADMIN: pb.ROLE_ADMIN,
}


def token_to_pb(token: ApiToken) -> pb.Token:
    """Domain token -> message (never the secret or its hash)."""
    return pb.Token(
        name=token.name,
        role=_ROLE_TO_PB[token.role],
        created_at=timestamp(token.created_at),
        expires_at=timestamp(token.expires_at),
        revoked_at=timestamp(token.revoked_at),
    )


class TokenServicer(pb_grpc.TokenServiceServicer):
    """Creates, lists and revokes tokens; tells a caller who it is."""

    def __init__(self, auth: AuthService | None) -> None:
        self._auth = auth

    def _secured(self) -> AuthService:
        if self._auth is None:
            raise FailedPrecondition("this control plane runs with --insecure: it has no tokens")
        return self._auth

    @grpc_errors
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTokenResponse:
        if request.role not in (r.value for r in Role):
            raise InvalidArgument("role", "set a role: admin, user or reader")
        ttl = ttl_of(request.ttl_seconds, "ttl_seconds", None)
        token, secret = await self._secured().create_token(request.name, Role(request.role), ttl)
        return pb.CreateTokenResponse(token=token_to_pb(token), secret=secret)

    @grpc_errors
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTokensResponse:
        tokens = await self._secured().list_tokens()
        return pb.ListTokensResponse(tokens=[token_to_pb(t) for t in tokens])

    @grpc_errors
    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeTokenResponse:
        token = await self._secured().revoke_token(request.name)
        return pb.RevokeTokenResponse(token=token_to_pb(token))

    @grpc_errors
    async def WhoAmI(
        self, request: pb.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> pb.WhoAmIResponse:
        self._secured()
        principal = current_principal()
        assert principal is not None and principal.role is not None
        token = self._secured().token_named(principal.name)
        return pb.WhoAmIResponse(
            name=principal.name,
            role=_ROLE_TO_PB[principal.role],
            expires_at=timestamp(token.expires_at if token else None),
        )
