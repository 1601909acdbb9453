"""Codespecs in SQLite: versions of a name, and pages of the newest of each name."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from controlplane.core.codespec import Codespec, to_document
from controlplane.core.errors import Conflict
from controlplane.store.base import CodespecOrder, CodespecPage
from controlplane.store.micros import to_micros
from controlplane.store.sql_clauses import SQLITE, codespec_page
from controlplane.store.sql_rows import codespec_from_row, codespec_page_from_rows
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteCodespecs(SqliteConnection):
    async def latest_codespec(self, name: str) -> Codespec | None:
        def q() -> Codespec | None:
            row = self._db.execute(
                "SELECT * FROM codespecs WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
            return codespec_from_row(row) if row else None

        return await self._call(q)

    async def get_codespec(self, name: str, version: int) -> Codespec | None:
        def q() -> Codespec | None:
            row = self._db.execute(
                "SELECT * FROM codespecs WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            return codespec_from_row(row) if row else None

        return await self._call(q)

    async def insert_codespec(self, spec: Codespec) -> Codespec:
        assert spec.created_at is not None and spec.version >= 1
        created_at = to_micros(spec.created_at)

        def tx(conn: sqlite3.Connection) -> Codespec:
            row = conn.execute(
                "SELECT MAX(version) AS v FROM codespecs WHERE name = ?", (spec.name,)
            ).fetchone()
            if (row["v"] or 0) + 1 != spec.version:
                raise Conflict(f"codespec {spec.name} is at version {row['v']}")
            conn.execute(
                "INSERT INTO codespecs (name, version, kind, spec, created_at) VALUES (?,?,?,?,?)",
                (
                    spec.name,
                    spec.version,
                    spec.kind,
                    json.dumps(to_document(spec)),
                    created_at,
                ),
            )
            return spec

        return await self._call(self._tx, tx)

    async def list_codespecs(
        self,
        *,
        prefix: str,
        order: CodespecOrder,
        limit: int,
        after: tuple[int, str] | None,
    ) -> CodespecPage:
        # A plain, case-sensitive prefix (LIKE ignores ASCII case and refuses
        # patterns over 50,000 bytes); any length, no escaping.
        params: list[Any] = [len(prefix), prefix]
        sql = (
            "WITH heads AS (SELECT name, MAX(version) AS version, MIN(created_at) AS born "
            "FROM codespecs WHERE substr(name, 1, ?) = ? GROUP BY name) "
            "SELECT c.*, h.born FROM heads h JOIN codespecs c "
            "ON c.name = h.name AND c.version = h.version"
        )
        page_sql, page_params = codespec_page(SQLITE, order, after, limit)

        def q() -> CodespecPage:
            rows = self._db.execute(sql + page_sql, params + page_params).fetchall()
            return codespec_page_from_rows(rows, limit)

        return await self._call(q)
