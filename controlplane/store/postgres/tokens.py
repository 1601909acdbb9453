"""API tokens and join tokens in PostgreSQL (their hashes; secrets are not kept)."""

from __future__ import annotations

import json
from datetime import datetime

from psycopg import errors

from controlplane.core.auth import ApiToken, JoinToken
from controlplane.core.errors import AlreadyExists
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, fetch_all, fetch_one
from controlplane.store.sql_rows import join_token_from_row, token_from_row


class PostgresTokens(PostgresConnection):
    async def insert_token(self, token: ApiToken) -> None:
        async def tx(conn: Conn) -> None:
            try:
                await conn.execute(
                    "INSERT INTO tokens (name, role, hash, created_at, expires_at, revoked_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [
                        token.name,
                        int(token.role),
                        token.hash,
                        to_micros(token.created_at),
                        maybe_micros(token.expires_at),
                        maybe_micros(token.revoked_at),
                    ],
                )
            except errors.UniqueViolation:
                raise AlreadyExists(
                    f"a token named '{token.name}' exists already; choose another name"
                ) from None

        await self._call(tx)

    async def list_tokens(self) -> list[ApiToken]:
        async def q(conn: Conn) -> list[ApiToken]:
            rows = await fetch_all(conn, "SELECT * FROM tokens ORDER BY name")
            return [token_from_row(r) for r in rows]

        return await self._read(q)

    async def revoke_token(self, name: str, now: datetime) -> ApiToken | None:
        async def tx(conn: Conn) -> ApiToken | None:
            row = await fetch_one(
                conn,
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s "
                "RETURNING *",
                [to_micros(now), name],
            )
            return token_from_row(row) if row else None

        return await self._call(tx)

    async def insert_join_token(self, token: JoinToken) -> None:
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO join_tokens (hash, pools, created_at, expires_at, used_by) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    token.hash,
                    json.dumps(list(token.pools)),
                    to_micros(token.created_at),
                    to_micros(token.expires_at),
                    token.used_by,
                ],
            )
        )

    async def use_join_token(self, hash: str, node: str, now: datetime) -> JoinToken | None:
        async def tx(conn: Conn) -> JoinToken | None:
            row = await fetch_one(
                conn,
                "UPDATE join_tokens SET used_by = %s "
                "WHERE hash = %s AND used_by = '' AND expires_at > %s "
                "RETURNING hash, pools::text AS pools, created_at, expires_at, used_by",
                [node, hash, to_micros(now)],
            )
            return join_token_from_row(row) if row else None

        return await self._call(tx)
