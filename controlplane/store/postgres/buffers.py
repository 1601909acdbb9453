"""Buffer records in PostgreSQL (their bytes are in the data plane), with their
tags. Changes lock the rows they read (SELECT ... FOR UPDATE): several control
planes' connections may write at once, where SQLite has one writer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import errors
from psycopg.rows import DictRow

from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.errors import AlreadyExists
from controlplane.store.base import BufferChange
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, changed, fetch_all, fetch_one
from controlplane.store.sql_clauses import POSTGRES, buffer_filter
from controlplane.store.sql_rows import buffers_from_rows

_BUFFER_COLUMNS = "id, created_at, expires_at, soft_deleted, location"


async def _buffers(conn: Conn, rows: Sequence[DictRow]) -> list[Buffer]:
    """Records from buffer rows, with their tags (one more query)."""
    tags: dict[str, dict[str, str]] = {r["id"]: {} for r in rows}
    if rows:
        for t in await fetch_all(
            conn,
            "SELECT buffer_id, key, value FROM buffer_tags "
            "WHERE buffer_id = ANY(%s::text[]) ORDER BY key",
            [list(tags)],
        ):
            tags[t["buffer_id"]][t["key"]] = t["value"]
    return buffers_from_rows(rows, tags)


async def _write_buffer(conn: Conn, buffer: Buffer, *, new: bool) -> None:
    values = [
        to_micros(buffer.created_at),
        maybe_micros(buffer.expires_at),
        buffer.soft_deleted,
        buffer.location,
        buffer.id,
    ]
    if new:
        await conn.execute(
            "INSERT INTO buffers (created_at, expires_at, soft_deleted, location, id) "
            "VALUES (%s, %s, %s, %s, %s)",
            values,
        )
    else:
        await conn.execute(
            "UPDATE buffers SET created_at = %s, expires_at = %s, soft_deleted = %s, "
            "location = %s WHERE id = %s",
            values,
        )
        await conn.execute("DELETE FROM buffer_tags WHERE buffer_id = %s", [buffer.id])
    if buffer.tags:
        await conn.execute(
            "INSERT INTO buffer_tags (buffer_id, key, value) "
            "SELECT %s, k, v FROM unnest(%s::text[], %s::text[]) AS t(k, v)",
            [buffer.id, list(buffer.tags), list(buffer.tags.values())],
        )


async def _apply(
    conn: Conn, current: list[tuple[str, Buffer | None]], change: BufferChange
) -> list[Buffer]:
    stored = []
    for buffer_id, buffer in current:
        after = change(buffer_id, buffer)
        if after is not None:
            assert after.id == buffer_id and buffer is not None, "change keeps the id"
            await _write_buffer(conn, after, new=False)
            stored.append(after)
    return stored


class PostgresBuffers(PostgresConnection):
    async def insert_buffer(self, buffer: Buffer) -> None:
        async def tx(conn: Conn) -> None:
            try:
                await _write_buffer(conn, buffer, new=True)
            except errors.UniqueViolation:
                raise AlreadyExists(f"a buffer with the id '{buffer.id}' exists already") from None

        await self._call(tx)

    async def get_buffer(self, buffer_id: str) -> Buffer | None:
        async def q(conn: Conn) -> Buffer | None:
            rows = await fetch_all(
                conn, f"SELECT {_BUFFER_COLUMNS} FROM buffers WHERE id = %s", [buffer_id]
            )
            return (await _buffers(conn, rows))[0] if rows else None

        return await self._read(q)

    async def list_buffers(
        self, flt: BufferFilter, *, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Buffer], bool]:
        where, params = buffer_filter(POSTGRES, flt, now)
        if after is not None:
            where += " AND (created_at, id) < (%s, %s)"
            params += list(after)

        async def q(conn: Conn) -> tuple[list[Buffer], bool]:
            rows = await fetch_all(
                conn,
                f"SELECT {_BUFFER_COLUMNS} FROM buffers WHERE {where} "
                "ORDER BY created_at DESC, id DESC LIMIT %s",
                [*params, limit + 1],
            )
            return await _buffers(conn, rows[:limit]), len(rows) > limit

        return await self._read(q)

    async def count_buffers(self, flt: BufferFilter, *, now: datetime) -> int:
        where, params = buffer_filter(POSTGRES, flt, now)

        async def q(conn: Conn) -> int:
            row = await fetch_one(conn, f"SELECT COUNT(*) AS n FROM buffers WHERE {where}", params)
            return int(row["n"]) if row else 0

        return await self._read(q)

    async def change_buffers(self, ids: list[str], change: BufferChange) -> list[Buffer]:
        async def tx(conn: Conn) -> list[Buffer]:
            current = []
            for buffer_id in ids:
                rows = await fetch_all(
                    conn,
                    f"SELECT {_BUFFER_COLUMNS} FROM buffers WHERE id = %s FOR UPDATE",
                    [buffer_id],
                )
                found = (await _buffers(conn, rows))[0] if rows else None
                current.append((buffer_id, found))
            return await _apply(conn, current, change)

        return await self._call(tx)

    async def change_matching(
        self, flt: BufferFilter, *, now: datetime, change: BufferChange
    ) -> list[Buffer]:
        where, params = buffer_filter(POSTGRES, flt, now)

        async def tx(conn: Conn) -> list[Buffer]:
            rows = await fetch_all(
                conn,
                f"SELECT {_BUFFER_COLUMNS} FROM buffers WHERE {where} "
                "ORDER BY created_at DESC, id DESC FOR UPDATE",
                params,
            )
            found = await _buffers(conn, rows)
            return await _apply(conn, [(b.id, b) for b in found], change)

        return await self._call(tx)

    async def expired_buffers(self, now: datetime, *, soft_deleted: bool, limit: int) -> list[str]:
        async def q(conn: Conn) -> list[str]:
            rows = await fetch_all(
                conn,
                "SELECT id FROM buffers WHERE expires_at IS NOT NULL AND expires_at <= %s "
                "AND soft_deleted = %s ORDER BY expires_at, id LIMIT %s",
                [to_micros(now), soft_deleted, limit],
            )
            return [r["id"] for r in rows]

        return await self._read(q)

    async def delete_buffers(self, ids: list[str]) -> int:
        if not ids:
            return 0

        async def tx(conn: Conn) -> int:
            await conn.execute("DELETE FROM buffer_tags WHERE buffer_id = ANY(%s::text[])", [ids])
            return await changed(conn, "DELETE FROM buffers WHERE id = ANY(%s::text[])", [ids])

        return await self._call(tx)
