"""Runs in PostgreSQL: each a JSON document with its status, times and tags in
columns of their own, and the CreateRun request ids that made them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from controlplane.core.runs import TERMINAL, Run
from controlplane.store.base import KnownRequest
from controlplane.store.documents import run_from_doc, run_to_doc
from controlplane.store.micros import maybe_micros, to_micros
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, changed, fetch_all, fetch_one
from controlplane.store.sql_clauses import POSTGRES, run_filter


async def _write_run(conn: Conn, run: Run) -> None:
    updated = await changed(
        conn,
        "UPDATE runs SET status = %s, doc = %s, finished_at = %s WHERE id = %s",
        [run.status, json.dumps(run_to_doc(run)), maybe_micros(run.finished_at), run.id],
    )
    if updated != 1:
        raise KeyError(f"run {run.id} does not exist")
    await conn.execute("DELETE FROM run_tags WHERE run_id = %s", [run.id])
    if run.tags:
        await conn.execute(
            "INSERT INTO run_tags (run_id, key, value) "
            "SELECT %s, k, v FROM unnest(%s::text[], %s::text[]) AS t(k, v)",
            [run.id, list(run.tags), list(run.tags.values())],
        )


class PostgresRuns(PostgresConnection):
    async def insert_run(self, run: Run, request_id: str = "", fingerprint: str = "") -> Run:
        async def tx(conn: Conn) -> Run:
            row = await fetch_one(
                conn,
                "INSERT INTO runs (status, created_at, doc) VALUES (%s, %s, '{}') RETURNING id",
                [run.status, to_micros(run.created_at)],
            )
            assert row is not None
            run.id = int(row["id"])
            await _write_run(conn, run)
            if request_id:
                await conn.execute(
                    "INSERT INTO run_requests (request_id, run_id, created_at, fingerprint) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (request_id) DO UPDATE SET "
                    "run_id = excluded.run_id, created_at = excluded.created_at, "
                    "fingerprint = excluded.fingerprint",
                    [request_id, run.id, to_micros(run.created_at), fingerprint],
                )
            return run

        return await self._call(tx)

    async def run_for_request(self, request_id: str, since: datetime) -> KnownRequest | None:
        async def q(conn: Conn) -> KnownRequest | None:
            row = await fetch_one(
                conn,
                "SELECT r.run_id, r.fingerprint FROM run_requests r "
                "JOIN runs ON runs.id = r.run_id WHERE r.request_id = %s AND r.created_at >= %s",
                [request_id, to_micros(since)],
            )
            return KnownRequest(int(row["run_id"]), row["fingerprint"]) if row else None

        return await self._read(q)

    async def forget_requests(self, before: datetime, limit: int) -> int:
        return await self._call(
            lambda conn: changed(
                conn,
                "DELETE FROM run_requests WHERE request_id IN (SELECT request_id FROM "
                "run_requests WHERE created_at < %s LIMIT %s)",
                [to_micros(before), limit],
            )
        )

    async def save_run(self, run: Run) -> None:
        await self.save_runs([run])

    async def save_runs(self, runs: Sequence[Run]) -> None:
        async def tx(conn: Conn) -> None:
            for run in runs:
                await _write_run(conn, run)

        await self._call(tx)

    async def get_run(self, run_id: int) -> Run | None:
        async def q(conn: Conn) -> Run | None:
            row = await fetch_one(conn, "SELECT doc::text AS doc FROM runs WHERE id = %s", [run_id])
            return self._recent.decoded(run_id, row["doc"]) if row else None

        return await self._read(q)

    async def list_runs(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[Run], bool]:
        where, params = run_filter(POSTGRES, tags, since, statuses)
        if before_id is not None:
            where += " AND id < %s"
            params.append(before_id)

        async def q(conn: Conn) -> tuple[list[Run], bool]:
            rows = await fetch_all(
                conn,
                f"SELECT id, doc::text AS doc FROM runs WHERE {where} ORDER BY id DESC LIMIT %s",
                [*params, limit + 1],
            )
            runs = [self._recent.decoded(int(r["id"]), r["doc"]) for r in rows[:limit]]
            return runs, len(rows) > limit

        return await self._read(q)

    async def count_runs(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        where, params = run_filter(POSTGRES, tags, since)

        async def q(conn: Conn) -> dict[str, int]:
            rows = await fetch_all(
                conn,
                f"SELECT status, COUNT(*) AS n FROM runs WHERE {where} GROUP BY status",
                params,
            )
            return {r["status"]: int(r["n"]) for r in rows}

        return await self._read(q)

    async def active_runs(self) -> list[Run]:
        async def q(conn: Conn) -> list[Run]:
            rows = await fetch_all(
                conn,
                "SELECT doc::text AS doc FROM runs WHERE status <> ALL(%s::text[]) ORDER BY id",
                [sorted(TERMINAL)],
            )
            return [run_from_doc(json.loads(r["doc"])) for r in rows]

        return await self._read(q)
