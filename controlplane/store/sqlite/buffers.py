"""Buffer records in SQLite (their bytes are in the data plane), with their tags."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.errors import AlreadyExists
from controlplane.store.base import BufferChange
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.sql_clauses import SQLITE, buffer_filter
from controlplane.store.sql_rows import buffers_from_rows
from controlplane.store.sqlite.connection import SqliteConnection

CHUNK = 500
"""Ids per statement: well under the 999 parameters SQLite allowed before 3.32."""


def _buffers(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[Buffer]:
    """Records from buffer rows, with their tags (one more query)."""
    tags: dict[str, dict[str, str]] = {r["id"]: {} for r in rows}
    for start in range(0, len(rows), CHUNK):
        chunk = [r["id"] for r in rows[start : start + CHUNK]]
        for t in conn.execute(
            f"SELECT buffer_id, key, value FROM buffer_tags WHERE buffer_id IN "
            f"({','.join('?' * len(chunk))}) ORDER BY key",
            chunk,
        ):
            tags[t["buffer_id"]][t["key"]] = t["value"]
    return buffers_from_rows(rows, tags)


def _write_buffer(conn: sqlite3.Connection, buffer: Buffer, *, new: bool) -> None:
    values = (
        to_micros(buffer.created_at),
        maybe_micros(buffer.expires_at),
        int(buffer.soft_deleted),
        buffer.location,
        buffer.id,
    )
    if new:
        conn.execute(
            "INSERT INTO buffers (created_at, expires_at, soft_deleted, location, id) "
            "VALUES (?, ?, ?, ?, ?)",
            values,
        )
    else:
        conn.execute(
            "UPDATE buffers SET created_at = ?, expires_at = ?, soft_deleted = ?, "
            "location = ? WHERE id = ?",
            values,
        )
        conn.execute("DELETE FROM buffer_tags WHERE buffer_id = ?", (buffer.id,))
    conn.executemany(
        "INSERT INTO buffer_tags (buffer_id, key, value) VALUES (?, ?, ?)",
        [(buffer.id, k, v) for k, v in buffer.tags.items()],
    )


def _apply(
    conn: sqlite3.Connection, current: list[tuple[str, Buffer | None]], change: BufferChange
) -> list[Buffer]:
    stored = []
    for buffer_id, buffer in current:
        after = change(buffer_id, buffer)
        if after is not None:
            assert after.id == buffer_id and buffer is not None, "change keeps the id"
            _write_buffer(conn, after, new=False)
            stored.append(after)
    return stored


class SqliteBuffers(SqliteConnection):
    async def insert_buffer(self, buffer: Buffer) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            try:
                _write_buffer(conn, buffer, new=True)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"a buffer with the id '{buffer.id}' exists already") from None

        await self._call(self._tx, tx)

    async def get_buffer(self, buffer_id: str) -> Buffer | None:
        def q() -> Buffer | None:
            rows = self._db.execute("SELECT * FROM buffers WHERE id = ?", (buffer_id,)).fetchall()
            return _buffers(self._db, rows)[0] if rows else None

        return await self._call(q)

    async def list_buffers(
        self, flt: BufferFilter, *, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Buffer], bool]:
        where, params = buffer_filter(SQLITE, flt, now)
        if after is not None:
            where += " AND (created_at, id) < (?, ?)"
            params += list(after)

        def q() -> tuple[list[Buffer], bool]:
            rows = self._db.execute(
                f"SELECT * FROM buffers WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            return _buffers(self._db, rows[:limit]), len(rows) > limit

        return await self._call(q)

    async def count_buffers(self, flt: BufferFilter, *, now: datetime) -> int:
        where, params = buffer_filter(SQLITE, flt, now)

        def q() -> int:
            row = self._db.execute(f"SELECT COUNT(*) FROM buffers WHERE {where}", params)
            return int(row.fetchone()[0])

        return await self._call(q)

    async def change_buffers(self, ids: list[str], change: BufferChange) -> list[Buffer]:
        def tx(conn: sqlite3.Connection) -> list[Buffer]:
            current = []
            for buffer_id in ids:
                rows = conn.execute("SELECT * FROM buffers WHERE id = ?", (buffer_id,)).fetchall()
                current.append((buffer_id, _buffers(conn, rows)[0] if rows else None))
            return _apply(conn, current, change)

        return await self._call(self._tx, tx)

    async def change_matching(
        self, flt: BufferFilter, *, now: datetime, change: BufferChange
    ) -> list[Buffer]:
        where, params = buffer_filter(SQLITE, flt, now)

        def tx(conn: sqlite3.Connection) -> list[Buffer]:
            rows = conn.execute(
                f"SELECT * FROM buffers WHERE {where} ORDER BY created_at DESC, id DESC", params
            ).fetchall()
            found = _buffers(conn, rows)
            return _apply(conn, [(b.id, b) for b in found], change)

        return await self._call(self._tx, tx)

    async def expired_buffers(self, now: datetime, *, soft_deleted: bool, limit: int) -> list[str]:
        def q() -> list[str]:
            rows = self._db.execute(
                "SELECT id FROM buffers WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "AND soft_deleted = ? ORDER BY expires_at, id LIMIT ?",
                (to_micros(now), int(soft_deleted), limit),
            ).fetchall()
            return [r["id"] for r in rows]

        return await self._call(q)

    async def delete_buffers(self, ids: list[str]) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            gone = 0
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM buffer_tags WHERE buffer_id IN ({marks})", chunk)
                gone += conn.execute(f"DELETE FROM buffers WHERE id IN ({marks})", chunk).rowcount
            return gone

        return await self._call(self._tx, tx) if ids else 0
