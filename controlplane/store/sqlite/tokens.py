"""API tokens and join tokens in SQLite (their hashes; secrets are not kept)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from controlplane.core.auth import ApiToken, JoinToken
from controlplane.core.errors import AlreadyExists
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.sql_rows import join_token_from_row, token_from_row
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteTokens(SqliteConnection):
    async def insert_token(self, token: ApiToken) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO tokens (name, role, hash, created_at, expires_at, revoked_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        token.name,
                        int(token.role),
                        token.hash,
                        to_micros(token.created_at),
                        maybe_micros(token.expires_at),
                        maybe_micros(token.revoked_at),
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"a token named '{token.name}' exists already; choose another name"
                ) from None

        await self._call(self._tx, tx)

    async def list_tokens(self) -> list[ApiToken]:
        def q() -> list[ApiToken]:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY name").fetchall()
            return [token_from_row(r) for r in rows]

        return await self._call(q)

    async def revoke_token(self, name: str, now: datetime) -> ApiToken | None:
        def tx(conn: sqlite3.Connection) -> ApiToken | None:
            conn.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?",
                (to_micros(now), name),
            )
            row = conn.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
            return token_from_row(row) if row else None

        return await self._call(self._tx, tx)

    async def insert_join_token(self, token: JoinToken) -> None:
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO join_tokens (hash, pools, created_at, expires_at, used_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    token.hash,
                    json.dumps(list(token.pools)),
                    to_micros(token.created_at),
                    to_micros(token.expires_at),
                    token.used_by,
                ),
            ),
        )

    async def use_join_token(self, hash: str, node: str, now: datetime) -> JoinToken | None:
        def tx(conn: sqlite3.Connection) -> JoinToken | None:
            spent = conn.execute(
                "UPDATE join_tokens SET used_by = ? "
                "WHERE hash = ? AND used_by = '' AND expires_at > ?",
                (node, hash, to_micros(now)),
            ).rowcount
            if not spent:
                return None
            row = conn.execute("SELECT * FROM join_tokens WHERE hash = ?", (hash,)).fetchone()
            return join_token_from_row(row)

        return await self._call(self._tx, tx)
