"""Nodes in SQLite (each a JSON document), and when removed ones went."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from controlplane.core.nodes import Node
from controlplane.store.documents import node_from_doc, node_to_doc
from controlplane.store.micros import from_micros, to_micros
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteNodes(SqliteConnection):
    async def save_node(self, node: Node) -> None:
        doc = json.dumps(node_to_doc(node))
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO nodes (name, doc) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                (node.name, doc),
            ),
        )

    async def list_nodes(self) -> list[Node]:
        def q() -> list[Node]:
            rows = self._db.execute("SELECT doc FROM nodes ORDER BY name").fetchall()
            return [node_from_doc(json.loads(r["doc"])) for r in rows]

        return await self._call(q)

    async def delete_node(self, name: str, now: datetime) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO removed_nodes (name, removed_at) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET removed_at = excluded.removed_at",
                (name, to_micros(now)),
            )

        await self._call(self._tx, tx)

    async def node_removed_at(self, name: str) -> datetime | None:
        def q() -> datetime | None:
            row = self._db.execute(
                "SELECT removed_at FROM removed_nodes WHERE name = ?", (name,)
            ).fetchone()
            return from_micros(row["removed_at"]) if row else None

        return await self._call(q)
