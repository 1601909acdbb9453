"""Codespecs in PostgreSQL: versions of a name, and pages of the newest of each name."""

from __future__ import annotations

import json
from typing import Any

from psycopg import errors

from controlplane.core.codespec import Codespec, to_document
from controlplane.core.errors import Conflict
from controlplane.store.base import CodespecOrder, CodespecPage
from controlplane.store.micros import to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, fetch_all, fetch_one
from controlplane.store.sql_clauses import POSTGRES, codespec_page
from controlplane.store.sql_rows import codespec_from_row, codespec_page_from_rows


class PostgresCodespecs(PostgresConnection):
    async def latest_codespec(self, name: str) -> Codespec | None:
        async def q(conn: Conn) -> Codespec | None:
            row = await fetch_one(
                conn,
                "SELECT name, version, spec::text AS spec, created_at FROM codespecs "
                "WHERE name = %s ORDER BY version DESC LIMIT 1",
                [name],
            )
            return codespec_from_row(row) if row else None

        return await self._read(q)

    async def get_codespec(self, name: str, version: int) -> Codespec | None:
        async def q(conn: Conn) -> Codespec | None:
            row = await fetch_one(
                conn,
                "SELECT name, version, spec::text AS spec, created_at FROM codespecs "
                "WHERE name = %s AND version = %s",
                [name, version],
            )
            return codespec_from_row(row) if row else None

        return await self._read(q)

    async def insert_codespec(self, spec: Codespec) -> Codespec:
        assert spec.created_at is not None and spec.version >= 1
        created_at = to_micros(spec.created_at)

        async def tx(conn: Conn) -> Codespec:
            row = await fetch_one(
                conn, "SELECT MAX(version) AS v FROM codespecs WHERE name = %s", [spec.name]
            )
            current = row["v"] if row else None
            if (current or 0) + 1 != spec.version:
                raise Conflict(f"codespec {spec.name} is at version {current}")
            try:
                await conn.execute(
                    "INSERT INTO codespecs (name, version, kind, spec, created_at) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [spec.name, spec.version, spec.kind, json.dumps(to_document(spec)), created_at],
                )
            except errors.UniqueViolation:  # a concurrent writer took the version
                raise Conflict(f"codespec {spec.name} version {spec.version} exists") from None
            return spec

        return await self._call(tx)

    async def list_codespecs(
        self,
        *,
        prefix: str,
        order: CodespecOrder,
        limit: int,
        after: tuple[int, str] | None,
    ) -> CodespecPage:
        params: list[Any] = [prefix]
        sql = (
            "WITH heads AS (SELECT name, MAX(version) AS version, MIN(created_at) AS born "
            "FROM codespecs WHERE starts_with(name, %s) GROUP BY name) "
            "SELECT c.name, c.version, c.spec::text AS spec, c.created_at, h.born "
            "FROM heads h JOIN codespecs c ON c.name = h.name AND c.version = h.version"
        )
        page_sql, page_params = codespec_page(POSTGRES, order, after, limit)

        async def q(conn: Conn) -> CodespecPage:
            rows = await fetch_all(conn, sql + page_sql, params + page_params)
            return codespec_page_from_rows(rows, limit)

        return await self._read(q)
