"""Authentication use cases: bearer tokens, join tokens and node certificates.

Tokens are checked on every call, so they are held in memory (by hash) and
the store is written first on every change: a revoked token is refused by the
very next call. Node certificates carry the node's name and pools; what the
control plane remembers about them is only when a node was removed, because a
removal refuses every certificate of that node issued until then.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from controlplane.core.auth import (
    DEFAULT_JOIN_TTL,
    JOIN_PREFIX,
    TOKEN_PREFIX,
    ApiToken,
    JoinToken,
    Principal,
    Role,
    new_secret,
    secret_hash,
)
from controlplane.core.codespec import NAME_RE
from controlplane.core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from controlplane.security.ca import ClusterCA, CsrError, check_csr
from controlplane.services.codespecs import utcnow
from controlplane.store.base import Store
from muster.common.pki import NodeCert, parse_node_cert

log = logging.getLogger(__name__)
BOOTSTRAP_ADMIN = "admin"


@dataclass(frozen=True)
class Joined:
    """What a successful join hands back to the agent."""

    certificate_pem: bytes
    pools: tuple[str, ...]


def _check_name(name: str, field: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            field,
            f"'{name}' is not a valid {what}: use 1-63 of a-z 0-9 - . _, "
            "starting with a letter or digit",
        )


class AuthService:
    """Tokens, join tokens, node certificates."""

    def __init__(
        self,
        store: Store,
        ca: ClusterCA,
        clock: Callable[[], datetime] = utcnow,
        node_lifetime: timedelta = timedelta(days=30),
    ) -> None:
        self._store = store
        self._ca = ca
        self._clock = clock
        self.node_lifetime = node_lifetime
        self._by_hash: dict[str, ApiToken] = {}

    async def load(self) -> None:
        """Read every token into memory (again: followers and a new leader do).

        A token created or revoked here while the store was being read is
        kept as it is in memory: the read may predate it, and a revocation
        must never be undone, even for a moment."""
        loaded = {t.hash: t for t in await self._store.list_tokens()}
        for key, token in self._by_hash.items():
            known = loaded.get(key)
            if known is None or (token.revoked_at is not None and known.revoked_at is None):
                loaded[key] = token
        self._by_hash = loaded

    # -- bearer tokens -----------------------------------------------------

    def authenticate(self, secret: str) -> Principal:
        """The caller behind a bearer secret, or Unauthenticated."""
        token = self._by_hash.get(secret_hash(secret)) if secret else None
        if token is None:
            raise Unauthenticated(
                "the token is not valid; check MUSTER_CONFIG or run `muster login`"
            )
        now = self._clock()
        if token.revoked_at is not None:
            raise Unauthenticated(f"the token '{token.name}' was revoked")
        if token.expires_at is not None and now >= token.expires_at:
            raise Unauthenticated(
                f"the token '{token.name}' expired at {token.expires_at:%Y-%m-%dT%H:%M:%SZ}; "
                "ask an admin for a new one"
            )
        return Principal(token.name, token.role)

    async def create_token(
        self, name: str, role: Role, ttl: timedelta | None
    ) -> tuple[ApiToken, str]:
        """A new token and its secret (shown once)."""
        _check_name(name, "name", "token name")
        now = self._clock()
        secret = new_secret(TOKEN_PREFIX)
        token = ApiToken(name, role, secret_hash(secret), now, now + ttl if ttl else None)
        await self._store.insert_token(token)
        self._by_hash[token.hash] = token
        log.info("event=token_created name=%s role=%s", name, role.label)
        return token, secret

    def token_named(self, name: str) -> ApiToken | None:
        """The cached token of that name, if any."""
        return next((t for t in self._by_hash.values() if t.name == name), None)

    async def list_tokens(self) -> list[ApiToken]:
        """Every token, by name."""
        return await self._store.list_tokens()

    async def revoke_token(self, name: str) -> ApiToken:
        """Refuse a token from the next call on."""
        token = await self._store.revoke_token(name, self._clock())
        if token is None:
            raise NotFound(f"The token '{name}' was not found; `muster token list` shows them.")
        self._by_hash[token.hash] = token
        log.warning("event=token_revoked name=%s", name)
        return token

    async def bootstrap_admin(self, secret: str | None) -> str | None:
        """Make sure an administrator can get in on first start.

        `secret` is the token of an existing admin credential file. It is
        stored again if the database does not know it (say, a new --db with
        an old state directory), but never if it was revoked. Returns a new
        secret to write into a new credential file, or None."""
        if secret:
            if secret_hash(secret) in self._by_hash:
                return None
            if BOOTSTRAP_ADMIN not in {t.name for t in self._by_hash.values()}:
                token = ApiToken(BOOTSTRAP_ADMIN, Role.ADMIN, secret_hash(secret), self._clock())
                await self._store.insert_token(token)
                self._by_hash[token.hash] = token
                return None
        name = BOOTSTRAP_ADMIN
        taken = {t.name for t in self._by_hash.values()}
        while name in taken:
            name = f"{BOOTSTRAP_ADMIN}-{new_secret('')[:6].lower()}"
        _, new = await self.create_token(name, Role.ADMIN, None)
        return new

    # -- nodes -------------------------------------------------------------

    async def create_join_token(
        self, pools: list[str], ttl: timedelta | None
    ) -> tuple[str, JoinToken]:
        """A single-use join token granting `pools`."""
        if not pools:
            raise InvalidArgument("pools", "give at least one pool the node may join (--pool)")
        for i, pool in enumerate(pools):
            _check_name(pool, f"pools[{i}]", "pool name")
        now = self._clock()
        secret = new_secret(JOIN_PREFIX)
        token = JoinToken(
            secret_hash(secret),
            tuple(dict.fromkeys(pools)),
            now,
            now + (ttl or DEFAULT_JOIN_TTL),
        )
        await self._store.insert_join_token(token)
        log.info("event=join_token_created pools=%s", ",".join(token.pools))
        return secret, token

    async def join(
        self, secret: str, node: str, csr_pem: bytes, node_known: Callable[[str], bool]
    ) -> Joined:
        """Spend a join token on a certificate for `node`."""
        if not secret:
            raise Unauthenticated("a join token is required (muster node join-token create)")
        _check_name(node, "node_name", "node name")
        if node_known(node):
            raise AlreadyExists(
                f"node '{node}' has joined already; to join it again, first remove it with "
                f"`muster node remove {node}`"
            )
        try:
            check_csr(csr_pem, node)  # before the token is spent: bad input changes nothing
        except CsrError as exc:
            raise InvalidArgument("csr_pem", str(exc)) from None
        now = self._clock()
        token = await self._store.use_join_token(secret_hash(secret), node, now)
        if token is None:
            raise Unauthenticated(
                "the join token is not valid: unknown, already used or expired; "
                "ask an admin for a new one (muster node join-token create)"
            )
        certificate = await self._sign(csr_pem, node, token.pools, now)
        log.info("event=node_joined node=%s pools=%s", node, ",".join(token.pools))
        return Joined(certificate, token.pools)

    async def renew(self, cert: NodeCert, csr_pem: bytes) -> bytes:
        """A new certificate for a node that holds a valid one."""
        return await self._sign(csr_pem, cert.node, cert.pools, self._clock())

    async def _sign(
        self, csr_pem: bytes, node: str, pools: tuple[str, ...], now: datetime
    ) -> bytes:
        removed = await self._store.node_removed_at(node)
        if removed is not None:
            # Valid only from after the removal, so the revocation rule
            # (issued no later than the removal) never catches it.
            after = datetime.fromtimestamp(math.floor(removed.timestamp()) + 1, UTC)
            now = max(now, after)
        try:
            return self._ca.sign_node(csr_pem, node, pools, now, self.node_lifetime)
        except CsrError as exc:
            raise InvalidArgument("csr_pem", str(exc)) from None

    async def check_node_cert(self, pem: bytes) -> NodeCert:
        """The node a verified peer certificate names, unless it was revoked."""
        if not pem:
            raise Unauthenticated(
                "this method needs a node certificate (mTLS on the agent address); "
                "bearer tokens are not accepted"
            )
        cert = parse_node_cert(pem)
        removed = await self._store.node_removed_at(cert.node)
        if removed is not None and cert.not_before <= removed:
            raise PermissionDenied(
                f"the certificate of node '{cert.node}' was revoked when the node was removed; "
                "join again with a new join token"
            )
        if self._clock() >= cert.not_after:
            raise Unauthenticated(f"the certificate of node '{cert.node}' has expired")
        return cert
