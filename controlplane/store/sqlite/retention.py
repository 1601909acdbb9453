"""Retention in SQLite: finished runs deleted with everything of theirs, logs
capped per run (oldest lines first, one marker line for them), and the freed
pages given back to the file system."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from controlplane.store.log_marker import MARKER_ROOM, MARKER_SEQUENCE, last_line_to_drop
from controlplane.store.micros import to_micros
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteRetention(SqliteConnection):
    async def finished_before(self, before: datetime, limit: int) -> list[int]:
        def q() -> list[int]:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "ORDER BY finished_at, id LIMIT ?",
                (to_micros(before), limit),
            ).fetchall()
            return [int(r["id"]) for r in rows]

        return await self._call(q)

    async def delete_logs(self, run_id: int, limit: int) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE run_id = ? LIMIT ?)",
                (run_id, limit),
            ).rowcount

        return await self._call(self._tx, tx)

    async def delete_runs(self, run_ids: list[int]) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(run_ids))
            for table in ("logs", "run_log_usage", "run_tags", "run_requests"):
                conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)
            return conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", run_ids).rowcount

        return await self._call(self._tx, tx) if run_ids else 0

    async def log_usage(self, run_id: int) -> tuple[int, int]:
        def q() -> tuple[int, int]:
            row = self._db.execute(
                "SELECT bytes, dropped FROM run_log_usage WHERE run_id = ?", (run_id,)
            ).fetchone()
            return (int(row["bytes"]), int(row["dropped"])) if row else (0, 0)

        return await self._call(q)

    async def runs_over_log_cap(self, max_bytes: int, limit: int) -> list[int]:
        def q() -> list[int]:
            rows = self._db.execute(
                "SELECT run_id FROM run_log_usage WHERE bytes > ? ORDER BY bytes DESC LIMIT ?",
                (max_bytes, limit),
            ).fetchall()
            return [int(r["run_id"]) for r in rows]

        return await self._call(q)

    async def drop_oldest_logs(self, run_id: int, max_bytes: int, limit: int, marker: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            usage = conn.execute(
                "SELECT bytes, dropped FROM run_log_usage WHERE run_id = ?", (run_id,)
            ).fetchone()
            if usage is None or usage["bytes"] <= max_bytes:
                return 0
            excess = usage["bytes"] - max_bytes + MARKER_ROOM
            rows = conn.execute(
                "SELECT id, ts, length(CAST(text AS BLOB)) AS n FROM logs "
                "WHERE run_id = ? AND sequence >= 0 ORDER BY ts, id LIMIT ?",
                (run_id, limit),
            ).fetchall()
            last = last_line_to_drop(rows, excess, lambda row: int(row["n"]))
            if last is None:
                return 0
            dropped = conn.execute(
                "DELETE FROM logs WHERE run_id = ? AND sequence >= 0 AND (ts, id) <= (?, ?)",
                (run_id, last["ts"], last["id"]),
            ).rowcount
            total = usage["dropped"] + dropped
            conn.execute("UPDATE run_log_usage SET dropped = ? WHERE run_id = ?", (total, run_id))
            # One marker line, first of what is left, says how many were dropped in all.
            conn.execute(
                "DELETE FROM logs WHERE run_id = ? AND sequence = ?", (run_id, MARKER_SEQUENCE)
            )
            conn.execute(
                "INSERT INTO logs (run_id, role, replica, stream, sequence, ts, text) "
                "VALUES (?, 'job', 0, 'stderr', ?, ?, ?)",
                (run_id, MARKER_SEQUENCE, max(0, last["ts"] - 1), marker.format(dropped=total)),
            )
            return dropped

        return await self._call(self._tx, tx)

    async def compact(self, pages: int) -> int:
        def q() -> int:
            conn = self._db
            before = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if before:
                conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
            after = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if before and not after:  # done: the write-ahead log goes back to nothing too
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return int(before - after)

        return await self._call(q)
