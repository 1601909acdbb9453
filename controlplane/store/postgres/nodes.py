"""Nodes in PostgreSQL (each a JSON document), and when removed ones went."""

from __future__ import annotations

import json
from datetime import datetime

from controlplane.core.nodes import Node
from controlplane.store.documents import node_from_doc, node_to_doc
from controlplane.store.micros import from_micros, to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, fetch_all, fetch_one


class PostgresNodes(PostgresConnection):
    async def save_node(self, node: Node) -> None:
        doc = json.dumps(node_to_doc(node))
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO nodes (name, doc) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                [node.name, doc],
            )
        )

    async def list_nodes(self) -> list[Node]:
        async def q(conn: Conn) -> list[Node]:
            rows = await fetch_all(conn, "SELECT doc::text AS doc FROM nodes ORDER BY name")
            return [node_from_doc(json.loads(r["doc"])) for r in rows]

        return await self._read(q)

    async def delete_node(self, name: str, now: datetime) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute("DELETE FROM nodes WHERE name = %s", [name])
            await conn.execute(
                "INSERT INTO removed_nodes (name, removed_at) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET removed_at = excluded.removed_at",
                [name, to_micros(now)],
            )

        await self._call(tx)

    async def node_removed_at(self, name: str) -> datetime | None:
        async def q(conn: Conn) -> datetime | None:
            row = await fetch_one(
                conn, "SELECT removed_at FROM removed_nodes WHERE name = %s", [name]
            )
            return from_micros(row["removed_at"]) if row else None

        return await self._read(q)
