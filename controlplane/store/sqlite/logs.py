"""Run logs in SQLite: lines kept once each, read in time order (arrival
breaking ties) or followed in arrival order."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from controlplane.core.logs import LogLine, StoredLine
from controlplane.store.sql_clauses import SQLITE, log_filter
from controlplane.store.sqlite.connection import SqliteConnection

COLUMNS = "id, run_id, role, replica, stream, sequence, ts, text, partial"


def _lines(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[StoredLine]:
    """The lines a query on COLUMNS selects, from plain tuples: no sqlite3.Row
    per line, since whole-run reads go through hundreds of thousands."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return [
        StoredLine(i, LogLine(run, role, replica, stream, seq, ts, text, bool(partial)))
        for i, run, role, replica, stream, seq, ts, text, partial in cursor.execute(sql, params)
    ]


class SqliteLogs(SqliteConnection):
    async def append_logs(self, lines: list[LogLine]) -> int:
        rows = [
            (
                ln.run_id,
                ln.role,
                ln.replica,
                ln.stream,
                ln.sequence,
                ln.time_ns,
                ln.text,
                int(ln.partial),
                ln.run_id,
            )
            for ln in lines
        ]

        def tx(conn: sqlite3.Connection) -> int:
            added = conn.executemany(
                "INSERT OR IGNORE INTO logs "
                "(run_id, role, replica, stream, sequence, ts, text, partial) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?)",
                rows,
            ).rowcount
            return added  # rows inserted (not those the log-usage trigger changed)

        return await self._call(self._tx, tx)

    async def last_log_id(self, run_id: int) -> int:
        def q() -> int:
            row = self._db.execute(
                "SELECT MAX(id) AS m FROM logs WHERE run_id = ?", (run_id,)
            ).fetchone()
            return row["m"] or 0

        return await self._call(q)

    async def read_logs(
        self,
        run_id: int,
        *,
        since_ns: int | None,
        max_id: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[StoredLine]:
        where, params = log_filter(SQLITE, run_id, since_ns, max_id)
        if after is not None:
            where += " AND (ts, id) > (?, ?)"
            params += list(after)

        def q() -> list[StoredLine]:
            return _lines(
                self._db,
                f"SELECT {COLUMNS} FROM logs WHERE {where} ORDER BY ts, id LIMIT ?",
                [*params, limit],
            )

        return await self._call(q)

    async def tail_logs(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> list[StoredLine]:
        where, params = log_filter(SQLITE, run_id, since_ns, max_id)

        def q() -> list[StoredLine]:
            newest_first = _lines(
                self._db,
                f"SELECT {COLUMNS} FROM logs WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?",
                [*params, count],
            )
            return newest_first[::-1]

        return await self._call(q)

    async def tail_start(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> tuple[int, int] | None:
        where, params = log_filter(SQLITE, run_id, since_ns, max_id)

        def q() -> tuple[int, int] | None:
            row = (
                self._db.execute(
                    f"SELECT ts, id FROM logs WHERE {where} ORDER BY ts DESC, id DESC "
                    "LIMIT 1 OFFSET ?",
                    [*params, max(0, count - 1)],
                ).fetchone()
                or self._db.execute(
                    f"SELECT ts, id FROM logs WHERE {where} ORDER BY ts, id LIMIT 1", params
                ).fetchone()
            )
            return (int(row["ts"]), int(row["id"])) if row else None

        return await self._call(q)

    async def new_logs(self, run_id: int, *, after_id: int, limit: int) -> list[StoredLine]:
        def q() -> list[StoredLine]:
            return _lines(
                self._db,
                f"SELECT {COLUMNS} FROM logs WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (run_id, after_id, limit),
            )

        return await self._call(q)
