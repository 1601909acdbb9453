"""Talking to PostgreSQL: one connection outside the pool, statements and
their results, the per-run log locks, and errors in one line."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from controlplane.core.errors import StoreUnavailable

Conn = AsyncConnection[DictRow]

CONNECT_TIMEOUT = 10
"""Seconds to wait for the server when connecting."""
LOG_LOCK_CLASS = 0x6D75
"""First key of the per-run advisory locks taken around changes to a run's logs."""


def redact(url: str) -> str:
    """`url` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def utf8(text: str) -> bytes:
    """Log text as stored (BYTEA: PostgreSQL text cannot hold NUL, container output can)."""
    return text.encode("utf-8", "surrogatepass")


def one_line(exc: BaseException) -> str:
    """libpq's messages span lines (a hint under the error): one line for logs."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {one_line(exc)}")


async def fetch_all(conn: Conn, sql: str, params: Iterable[Any] = ()) -> list[DictRow]:
    cur = await conn.execute(sql, list(params))
    return await cur.fetchall()


async def fetch_one(conn: Conn, sql: str, params: Iterable[Any] = ()) -> DictRow | None:
    cur = await conn.execute(sql, list(params))
    return await cur.fetchone()


async def changed(conn: Conn, sql: str, params: Iterable[Any] = ()) -> int:
    """Rows a statement changed."""
    cur = await conn.execute(sql, list(params))
    return max(cur.rowcount, 0)


async def lock_runs(conn: Conn, run_ids: Iterable[int]) -> None:
    """Take the log locks of these runs, in id order (see postgres/__init__.py)."""
    for run_id in sorted(set(run_ids)):
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", [LOG_LOCK_CLASS, run_id % 2_147_483_647]
        )


async def connect(url: str) -> Conn:
    """One connection outside the pool, with the server's own error when it fails."""
    try:
        return await AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {redact(url)}: {one_line(exc)}"
        ) from None
