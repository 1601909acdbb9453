"""Who may call what: roles, the method policy, and token secrets. No I/O.

Every RPC the control plane serves is listed in `POLICY` with the one kind of
caller it admits. A method missing from the table is refused to everybody
(default deny), so a new RPC cannot be exposed by forgetting to list it; a
test checks that every method found by reflection is listed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

from controlplane.core.errors import InvalidArgument


class Role(IntEnum):
    """Bearer token roles; a higher role may do everything a lower one may."""

    READER = 1
    USER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """Lower-case name, as the CLI shows and takes it."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """'admin' / 'user' / 'reader' (any case)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidArgument(
                "role", f"'{text}' is not a role; use admin, user or reader"
            ) from None


PUBLIC = "public"
"""Anybody, without credentials: health checking and reflection."""
NODE = "node"
"""Only a node agent presenting its node certificate (mTLS)."""
JOIN = "join"
"""Anybody holding a valid join token, which the method itself checks."""

Requirement = Role | str

_HEALTH = "/grpc.health.v1.Health/"
_REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"
_V1 = "/muster.v1."

POLICY: dict[str, Requirement] = {
    _HEALTH + "Check": PUBLIC,
    _HEALTH + "Watch": PUBLIC,
    _REFLECTION + "ServerReflectionInfo": PUBLIC,
    _V1 + "CodespecService/CreateCodespec": Role.USER,
    _V1 + "CodespecService/GetCodespec": Role.READER,
    _V1 + "CodespecService/ListCodespecs": Role.READER,
    _V1 + "RunService/CreateRun": Role.USER,
    _V1 + "RunService/CancelRun": Role.USER,
    _V1 + "RunService/UpdateRunTags": Role.USER,
    _V1 + "RunService/GetRun": Role.READER,
    _V1 + "RunService/ListRuns": Role.READER,
    _V1 + "RunService/CountRuns": Role.READER,
    _V1 + "RunService/WatchRun": Role.READER,
    _V1 + "RunService/GetRunLogs": Role.READER,
    _V1 + "NodeService/ListNodes": Role.READER,
    _V1 + "NodeService/CreateJoinToken": Role.ADMIN,
    _V1 + "NodeService/RemoveNode": Role.ADMIN,
    _V1 + "NodeService/CordonNode": Role.ADMIN,
    _V1 + "NodeService/UncordonNode": Role.ADMIN,
    _V1 + "NodeService/DrainNode": Role.ADMIN,
    _V1 + "TokenService/CreateToken": Role.ADMIN,
    _V1 + "TokenService/ListTokens": Role.ADMIN,
    _V1 + "TokenService/RevokeToken": Role.ADMIN,
    _V1 + "TokenService/WhoAmI": Role.READER,
    _V1 + "AgentService/Connect": NODE,
    _V1 + "AgentService/RenewCertificate": NODE,
    _V1 + "AgentService/Join": JOIN,
    _V1 + "ImageService/PullImage": Role.USER,
    _V1 + "ImageService/ListImages": Role.READER,
    _V1 + "RegistryService/Login": Role.ADMIN,
    _V1 + "RegistryService/Logout": Role.ADMIN,
    _V1 + "RegistryService/ListRegistries": Role.ADMIN,
    _V1 + "BufferService/CreateBuffer": Role.USER,
    _V1 + "BufferService/GetBuffer": Role.READER,
    _V1 + "BufferService/ListBuffers": Role.READER,
    _V1 + "BufferService/CountBuffers": Role.READER,
    _V1 + "BufferService/UpdateBuffer": Role.USER,
    _V1 + "BufferService/DeleteBuffers": Role.ADMIN,
    _V1 + "BufferService/RestoreBuffers": Role.ADMIN,
    _V1 + "BufferService/GetBufferAccess": Role.USER,
}


def requirement(method: str) -> Requirement | None:
    """What `method` (a full gRPC method path) requires; None: refused to all."""
    return POLICY.get(method)


TOKEN_PREFIX = "mst_"
JOIN_PREFIX = "msj_"


def new_secret(prefix: str) -> str:
    """A random secret of 256 bits, with a prefix that says what it is
    (so that a leaked one is recognisable by secret scanners and people)."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """What the store keeps instead of a secret. The secrets are 256 random
    bits, so a plain SHA-256 is enough: there is nothing to guess."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A stored bearer token (its secret is never stored)."""

    name: str
    role: Role
    hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class JoinToken:
    """A stored single-use join token."""

    hash: str
    pools: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    used_by: str = ""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token's name and role, or a node."""

    name: str
    role: Role | None = None
    node: str = ""


MAX_TTL = timedelta(days=3650)
DEFAULT_JOIN_TTL = timedelta(hours=1)


def ttl_of(seconds: int, field: str, default: timedelta | None) -> timedelta | None:
    """A lifetime in seconds from a request: 0 means `default`; bounded."""
    if seconds < 0:
        raise InvalidArgument(field, f"must not be negative (got {seconds})")
    if seconds == 0:
        return default
    if seconds > MAX_TTL.total_seconds():
        raise InvalidArgument(field, "must be at most 10 years")
    return timedelta(seconds=seconds)
