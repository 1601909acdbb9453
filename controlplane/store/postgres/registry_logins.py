"""Registry logins in PostgreSQL (passwords sealed: security/sealing.py)."""

from __future__ import annotations

from controlplane.core.images import StoredLogin
from controlplane.store.micros import to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, changed, fetch_all
from controlplane.store.sql_rows import login_from_row


class PostgresRegistryLogins(PostgresConnection):
    async def save_registry_login(self, login: StoredLogin) -> None:
        assert login.updated_at is not None
        updated_at = to_micros(login.updated_at)
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO registry_logins (registry, username, sealed, updated_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (registry) DO UPDATE SET "
                "username = excluded.username, sealed = excluded.sealed, "
                "updated_at = excluded.updated_at",
                [login.registry, login.username, bytes(login.sealed), updated_at],
            )
        )

    async def list_registry_logins(self) -> list[StoredLogin]:
        async def q(conn: Conn) -> list[StoredLogin]:
            rows = await fetch_all(conn, "SELECT * FROM registry_logins ORDER BY registry")
            return [login_from_row(r) for r in rows]

        return await self._read(q)

    async def delete_registry_login(self, registry: str) -> bool:
        return bool(
            await self._call(
                lambda conn: changed(
                    conn, "DELETE FROM registry_logins WHERE registry = %s", [registry]
                )
            )
        )
