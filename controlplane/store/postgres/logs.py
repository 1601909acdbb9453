"""Run logs in PostgreSQL: lines kept once each (text as bytes), read in time
order (arrival breaking ties) or followed in arrival order. Every change to a
run's lines takes that run's log lock first (postgres/__init__.py says why)."""

from __future__ import annotations

from typing import Any

from psycopg.rows import DictRow

from controlplane.core.logs import LogLine, StoredLine
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, changed, fetch_all, fetch_one, lock_runs, utf8
from controlplane.store.sql_clauses import POSTGRES, log_filter

_LOG_COLUMNS = "id, run_id, role, replica, stream, sequence, ts, text, partial"


def _line(row: DictRow) -> StoredLine:
    return StoredLine(
        int(row["id"]),
        LogLine(
            int(row["run_id"]),
            row["role"],
            row["replica"],
            row["stream"],
            int(row["sequence"]),
            int(row["ts"]),
            bytes(row["text"]).decode("utf-8", "surrogatepass"),
            bool(row["partial"]),
        ),
    )


class PostgresLogs(PostgresConnection):
    async def append_logs(self, lines: list[LogLine]) -> int:
        """One INSERT for the whole batch (arrays unnested in batch order, so
        arrival ids follow it); lines stored already, or of runs that do not
        exist, are skipped by the statement itself."""
        if not lines:
            return 0
        columns: list[list[Any]] = [
            [ln.run_id for ln in lines],
            [ln.role for ln in lines],
            [ln.replica for ln in lines],
            [ln.stream for ln in lines],
            [ln.sequence for ln in lines],
            [ln.time_ns for ln in lines],
            [utf8(ln.text) for ln in lines],
            [ln.partial for ln in lines],
        ]

        async def tx(conn: Conn) -> int:
            await lock_runs(conn, columns[0])
            return await changed(
                conn,
                "INSERT INTO logs (run_id, role, replica, stream, sequence, ts, text, partial) "
                "SELECT l.run_id, l.role, l.replica, l.stream, l.sequence, l.ts, l.text, "
                "l.partial FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], "
                "%s::bigint[], %s::bigint[], %s::bytea[], %s::bool[]) WITH ORDINALITY "
                "AS l(run_id, role, replica, stream, sequence, ts, text, partial, n) "
                "WHERE EXISTS (SELECT 1 FROM runs WHERE runs.id = l.run_id) "
                "ORDER BY l.n ON CONFLICT DO NOTHING",
                columns,
            )

        return await self._call(tx)

    async def last_log_id(self, run_id: int) -> int:
        async def q(conn: Conn) -> int:
            row = await fetch_one(conn, "SELECT MAX(id) AS m FROM logs WHERE run_id = %s", [run_id])
            return int(row["m"] or 0) if row else 0

        return await self._read(q)

    async def read_logs(
        self,
        run_id: int,
        *,
        since_ns: int | None,
        max_id: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[StoredLine]:
        where, params = log_filter(POSTGRES, run_id, since_ns, max_id)
        if after is not None:
            where += " AND (ts, id) > (%s, %s)"
            params += list(after)

        async def q(conn: Conn) -> list[StoredLine]:
            rows = await fetch_all(
                conn,
                f"SELECT {_LOG_COLUMNS} FROM logs WHERE {where} ORDER BY ts, id LIMIT %s",
                [*params, limit],
            )
            return [_line(r) for r in rows]

        return await self._read(q)

    async def tail_logs(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> list[StoredLine]:
        where, params = log_filter(POSTGRES, run_id, since_ns, max_id)

        async def q(conn: Conn) -> list[StoredLine]:
            rows = await fetch_all(
                conn,
                f"SELECT {_LOG_COLUMNS} FROM logs WHERE {where} ORDER BY ts DESC, id DESC LIMIT %s",
                [*params, count],
            )
            return [_line(r) for r in reversed(rows)]

        return await self._read(q)

    async def tail_start(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> tuple[int, int] | None:
        where, params = log_filter(POSTGRES, run_id, since_ns, max_id)

        async def q(conn: Conn) -> tuple[int, int] | None:
            row = await fetch_one(
                conn,
                f"SELECT ts, id FROM logs WHERE {where} ORDER BY ts DESC, id DESC "
                "LIMIT 1 OFFSET %s",
                [*params, max(0, count - 1)],
            ) or await fetch_one(
                conn, f"SELECT ts, id FROM logs WHERE {where} ORDER BY ts, id LIMIT 1", params
            )
            return (int(row["ts"]), int(row["id"])) if row else None

        return await self._read(q)

    async def new_logs(self, run_id: int, *, after_id: int, limit: int) -> list[StoredLine]:
        async def q(conn: Conn) -> list[StoredLine]:
            rows = await fetch_all(
                conn,
                f"SELECT {_LOG_COLUMNS} FROM logs WHERE run_id = %s AND id > %s "
                "ORDER BY id LIMIT %s",
                [run_id, after_id, limit],
            )
            return [_line(r) for r in rows]

        return await self._read(q)
