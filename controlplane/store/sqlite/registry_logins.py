"""Registry logins in SQLite (passwords sealed: security/sealing.py)."""

from __future__ import annotations

import sqlite3

from controlplane.core.images import StoredLogin
from controlplane.store.micros import to_micros
from controlplane.store.sql_rows import login_from_row
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteRegistryLogins(SqliteConnection):
    async def save_registry_login(self, login: StoredLogin) -> None:
        assert login.updated_at is not None
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO registry_logins (registry, username, sealed, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (registry) DO UPDATE SET "
                "username = excluded.username, sealed = excluded.sealed, "
                "updated_at = excluded.updated_at",
                (login.registry, login.username, login.sealed, to_micros(login.updated_at)),
            ),
        )

    async def list_registry_logins(self) -> list[StoredLogin]:
        def q() -> list[StoredLogin]:
            rows = self._db.execute("SELECT * FROM registry_logins ORDER BY registry").fetchall()
            return [login_from_row(r) for r in rows]

        return await self._call(q)

    async def delete_registry_login(self, registry: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute("DELETE FROM registry_logins WHERE registry = ?", (registry,)).rowcount
            )

        return await self._call(self._tx, tx)
