"""Retention in PostgreSQL: finished runs deleted with everything of theirs,
and logs capped per run (oldest lines first, one marker line for them)."""

from __future__ import annotations

from datetime import datetime

from controlplane.store.log_marker import MARKER_ROOM, MARKER_SEQUENCE, last_line_to_drop
from controlplane.store.micros import to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, changed, fetch_all, fetch_one, lock_runs, utf8


class PostgresRetention(PostgresConnection):
    async def finished_before(self, before: datetime, limit: int) -> list[int]:
        async def q(conn: Conn) -> list[int]:
            rows = await fetch_all(
                conn,
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < %s "
                "ORDER BY finished_at, id LIMIT %s",
                [to_micros(before), limit],
            )
            return [int(r["id"]) for r in rows]

        return await self._read(q)

    async def delete_logs(self, run_id: int, limit: int) -> int:
        async def tx(conn: Conn) -> int:
            await lock_runs(conn, [run_id])
            return await changed(
                conn,
                "DELETE FROM logs WHERE id IN "
                "(SELECT id FROM logs WHERE run_id = %s ORDER BY id LIMIT %s)",
                [run_id, limit],
            )

        return await self._call(tx)

    async def delete_runs(self, run_ids: list[int]) -> int:
        if not run_ids:
            return 0

        async def tx(conn: Conn) -> int:
            await lock_runs(conn, run_ids)
            for table in ("logs", "run_log_usage", "run_tags", "run_requests"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE run_id = ANY(%s::bigint[])", [run_ids]
                )
            return await changed(conn, "DELETE FROM runs WHERE id = ANY(%s::bigint[])", [run_ids])

        return await self._call(tx)

    async def log_usage(self, run_id: int) -> tuple[int, int]:
        async def q(conn: Conn) -> tuple[int, int]:
            row = await fetch_one(
                conn, "SELECT bytes, dropped FROM run_log_usage WHERE run_id = %s", [run_id]
            )
            return (int(row["bytes"]), int(row["dropped"])) if row else (0, 0)

        return await self._read(q)

    async def runs_over_log_cap(self, max_bytes: int, limit: int) -> list[int]:
        async def q(conn: Conn) -> list[int]:
            rows = await fetch_all(
                conn,
                "SELECT run_id FROM run_log_usage WHERE bytes > %s "
                "ORDER BY bytes DESC, run_id LIMIT %s",
                [max_bytes, limit],
            )
            return [int(r["run_id"]) for r in rows]

        return await self._read(q)

    async def drop_oldest_logs(self, run_id: int, max_bytes: int, limit: int, marker: str) -> int:
        async def tx(conn: Conn) -> int:
            await lock_runs(conn, [run_id])
            usage = await fetch_one(
                conn, "SELECT bytes, dropped FROM run_log_usage WHERE run_id = %s", [run_id]
            )
            if usage is None or usage["bytes"] <= max_bytes:
                return 0
            excess = int(usage["bytes"]) - max_bytes + MARKER_ROOM
            rows = await fetch_all(
                conn,
                "SELECT id, ts, octet_length(text) AS n FROM logs "
                "WHERE run_id = %s AND sequence >= 0 ORDER BY ts, id LIMIT %s",
                [run_id, limit],
            )
            last = last_line_to_drop(rows, excess, lambda row: int(row["n"]))
            if last is None:
                return 0
            dropped = await changed(
                conn,
                "DELETE FROM logs WHERE run_id = %s AND sequence >= 0 AND (ts, id) <= (%s, %s)",
                [run_id, last["ts"], last["id"]],
            )
            total = int(usage["dropped"]) + dropped
            await conn.execute(
                "UPDATE run_log_usage SET dropped = %s WHERE run_id = %s", [total, run_id]
            )
            # One marker line, first of what is left, says how many were dropped in all.
            await conn.execute(
                "DELETE FROM logs WHERE run_id = %s AND sequence = %s", [run_id, MARKER_SEQUENCE]
            )
            await conn.execute(
                "INSERT INTO logs (run_id, role, replica, stream, sequence, ts, text) "
                "VALUES (%s, 'job', 0, 'stderr', %s, %s, %s)",
                [
                    run_id,
                    MARKER_SEQUENCE,
                    max(0, int(last["ts"]) - 1),
                    utf8(marker.format(dropped=total)),
                ],
            )
            return dropped

        return await self._call(tx)

    async def compact(self, pages: int) -> int:
        """Nothing to do: PostgreSQL's autovacuum makes the space of deleted rows
        reusable; giving it back to the file system takes VACUUM FULL (or
        pg_repack), which locks tables, so it is left to the operator."""
        return 0
