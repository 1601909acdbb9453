"""Runs in SQLite: each a JSON document with its status, times and tags in
columns of their own, and the CreateRun request ids that made them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from controlplane.coalescer import Coalescer
from controlplane.core.runs import TERMINAL, Run
from controlplane.store.base import KnownRequest
from controlplane.store.documents import run_from_doc, run_to_doc
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.sql_clauses import SQLITE, run_filter
from controlplane.store.sqlite.connection import SqliteConnection

Box = list[Run | None]
"""Where a point read puts the run it found (None: no such run)."""
READ_CHUNK = 500
"""Ids per query of coalesced point reads (well under SQLite's bound on parameters)."""


class SqliteRuns(SqliteConnection):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._point_reads: Coalescer[tuple[int, Box]] = Coalescer(self._read_runs)
        """GetRun misses that arrive while one is being read share the next
        hop to the store thread (one query for all of them): the hop, not
        the read, was most of a point read's cost."""

    async def insert_run(self, run: Run, request_id: str = "", fingerprint: str = "") -> Run:
        def tx(conn: sqlite3.Connection) -> Run:
            cur = conn.execute(
                "INSERT INTO runs (status, created_at, doc) VALUES (?, ?, '{}')",
                (run.status, to_micros(run.created_at)),
            )
            run.id = int(cur.lastrowid)  # type: ignore[arg-type]  # set by an INSERT
            self._write_run(conn, run)
            if request_id:
                conn.execute(
                    "INSERT INTO run_requests (request_id, run_id, created_at, fingerprint) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET "
                    "run_id = excluded.run_id, created_at = excluded.created_at, "
                    "fingerprint = excluded.fingerprint",
                    (request_id, run.id, to_micros(run.created_at), fingerprint),
                )
            return run

        return await self._call(self._tx, tx)

    async def run_for_request(self, request_id: str, since: datetime) -> KnownRequest | None:
        def q() -> KnownRequest | None:
            row = self._db.execute(
                "SELECT r.run_id, r.fingerprint FROM run_requests r "
                "JOIN runs ON runs.id = r.run_id WHERE r.request_id = ? AND r.created_at >= ?",
                (request_id, to_micros(since)),
            ).fetchone()
            return KnownRequest(int(row["run_id"]), row["fingerprint"]) if row else None

        return await self._call(q)

    async def forget_requests(self, before: datetime, limit: int) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM run_requests WHERE request_id IN (SELECT request_id FROM "
                "run_requests WHERE created_at < ? LIMIT ?)",
                (to_micros(before), limit),
            ).rowcount

        return await self._call(self._tx, tx)

    @staticmethod
    def _write_run(conn: sqlite3.Connection, run: Run) -> None:
        updated = conn.execute(
            "UPDATE runs SET status = ?, doc = ?, finished_at = ? WHERE id = ?",
            (run.status, json.dumps(run_to_doc(run)), maybe_micros(run.finished_at), run.id),
        ).rowcount
        if updated != 1:
            raise KeyError(f"run {run.id} does not exist")
        conn.execute("DELETE FROM run_tags WHERE run_id = ?", (run.id,))
        conn.executemany(
            "INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?)",
            [(run.id, k, v) for k, v in run.tags.items()],
        )

    async def save_run(self, run: Run) -> None:
        await self.save_runs([run])

    async def save_runs(self, runs: Sequence[Run]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            for run in runs:
                self._write_run(conn, run)

        await self._call(self._tx, tx)

    async def get_run(self, run_id: int) -> Run | None:
        box: Box = [None]
        await self._point_reads.submit((run_id, box))
        return box[0]

    async def _read_runs(self, wanted: list[tuple[int, Box]]) -> None:
        def q() -> dict[int, Run]:
            ids, found = sorted({run_id for run_id, _ in wanted}), {}
            for at in range(0, len(ids), READ_CHUNK):
                chunk = ids[at : at + READ_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT id, doc FROM runs WHERE id IN ({marks})", chunk)
                found.update(
                    {row["id"]: self._recent.decoded(row["id"], row["doc"]) for row in rows}
                )
            return found

        found = await self._call(q)
        for run_id, box in wanted:
            box[0] = found.get(run_id)

    async def list_runs(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[Run], bool]:
        where, params = run_filter(SQLITE, tags, since, statuses)
        if before_id is not None:
            where += " AND id < ?"
            params.append(before_id)

        def q() -> tuple[list[Run], bool]:
            rows = self._db.execute(
                f"SELECT id, doc FROM runs WHERE {where} ORDER BY id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            runs = [self._recent.decoded(r["id"], r["doc"]) for r in rows[:limit]]
            return runs, len(rows) > limit

        return await self._call(q)

    async def count_runs(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        where, params = run_filter(SQLITE, tags, since)

        def q() -> dict[str, int]:
            rows = self._db.execute(
                f"SELECT status, COUNT(*) AS n FROM runs WHERE {where} GROUP BY status", params
            ).fetchall()
            return {r["status"]: r["n"] for r in rows}

        return await self._call(q)

    async def active_runs(self) -> list[Run]:
        def q() -> list[Run]:
            marks = ",".join("?" * len(TERMINAL))
            rows = self._db.execute(
                f"SELECT doc FROM runs WHERE status NOT IN ({marks}) ORDER BY id", sorted(TERMINAL)
            ).fetchall()
            return [run_from_doc(json.loads(r["doc"])) for r in rows]

        return await self._call(q)
