"""Codespecs in SQLite: versions of a name, and pages of the newest of each name."""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any

from controlplane.core.codespec import Codespec, to_document
from controlplane.core.errors import Conflict
from controlplane.store.base import CodespecOrder, CodespecPage
from controlplane.store.micros import to_micros
from controlplane.store.sql_clauses import SQLITE, codespec_page
from controlplane.store.sql_rows import codespec_from_row, codespec_page_from_rows
from controlplane.store.sqlite.connection import SqliteConnection

LATEST_KEPT = 1_000
"""Names whose latest codespec is kept in memory (the most recently used)."""


class SqliteCodespecs(SqliteConnection):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._latest: OrderedDict[str, Codespec] = OrderedDict()
        """The latest version of recently used names. A SQLite file has one
        control plane (it is locked), so every new version goes through
        `insert_codespec` here: what is kept is never stale. Every CreateRun
        resolves its codespecs by name; this spares each a hop and a query."""
        self._inserts = 0  # a read that overlapped an insert keeps nothing

    async def latest_codespec(self, name: str) -> Codespec | None:
        kept = self._latest.get(name)
        if kept is not None:
            self._latest.move_to_end(name)
            return kept

        def q() -> Codespec | None:
            row = self._db.execute(
                "SELECT * FROM codespecs WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
            return codespec_from_row(row) if row else None

        inserts = self._inserts
        found = await self._call(q)
        if found is not None and inserts == self._inserts:
            self._keep_latest(found)
        return found

    def _keep_latest(self, spec: Codespec) -> None:
        self._latest[spec.name] = spec
        while len(self._latest) > LATEST_KEPT:
            self._latest.popitem(last=False)

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

        self._inserts += 1
        self._latest.pop(spec.name, None)
        try:
            return await self._call(self._tx, tx)
        finally:
            self._latest.pop(spec.name, None)  # read back as stored, next time

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
