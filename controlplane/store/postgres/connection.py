"""The PostgreSQL store's connections: the pool, one transaction per writing
call, and the fence that keeps a deposed leader from writing. Each concern of
the store (postgres/codespecs.py, postgres/runs.py, ...) builds on this class."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from controlplane.core.errors import StoreUnavailable
from controlplane.store.base import Store
from controlplane.store.postgres.schema import migrate
from controlplane.store.postgres.sql import (
    CONNECT_TIMEOUT,
    Conn,
    fetch_one,
    redact,
    unavailable,
)
from controlplane.store.recent_runs import RecentRuns

log = logging.getLogger(__name__)
T = TypeVar("T")

POOL_MAX = 10
"""Connections per control plane; calls beyond wait for one (up to POOL_TIMEOUT)."""
POOL_TIMEOUT = 10.0
"""Seconds a call waits for a connection before it fails with StoreUnavailable."""
IDLE_TX_TIMEOUT_MS = 5000
"""The server ends a transaction left idle this long (its session goes too)."""


class PostgresConnection(Store):
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool
        self._recent = RecentRuns()
        self._fence: int | None = None

    @classmethod
    async def open(cls, url: str) -> Self:
        """Connect, migrate, and open the pool. Fails with StoreUnavailable when
        the server cannot be reached (with its reason) and SchemaTooNew when a
        newer muster migrated the database."""
        await migrate(url)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX,
            timeout=POOL_TIMEOUT,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": CONNECT_TIMEOUT,
                # A control plane paused mid-transaction (SIGSTOP, a frozen VM)
                # must not keep the lease row locked for the next leader.
                "options": f"-c idle_in_transaction_session_timeout={IDLE_TX_TIMEOUT_MS}",
            },
            # Checked when handed out: after a server restart, the first call
            # gets a new connection instead of an error.
            check=AsyncConnectionPool.check_connection,
            name="muster-store",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {redact(url)}") from exc
        log.info("event=store_opened backend=postgresql url=%s", redact(url))
        return cls(pool)

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self._pool.close()

    async def _call(
        self, fn: Callable[[Conn], Awaitable[T]], *, write: bool = True, fenced: bool = True
    ) -> T:
        """Run fn on a pooled connection, inside one transaction when it writes.
        Errors of the database or the connection become StoreUnavailable
        (UNAVAILABLE to API callers), as SQLite's do; integrity errors that
        fn did not turn into a domain error propagate. A fenced store (a
        leader's) checks its lease first in every write transaction."""
        try:
            async with self._pool.connection() as conn:
                if not write:
                    return await fn(conn)
                async with conn.transaction():
                    if fenced and self._fence is not None:
                        await self._check_fence(conn, self._fence)
                    return await fn(conn)
        except psycopg.IntegrityError:
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise unavailable(exc) from exc

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._call(fn, write=False)

    @staticmethod
    async def _check_fence(conn: Conn, epoch: int) -> None:
        """Commit only while the lease of `epoch` is held and unexpired: the
        row is held FOR KEY SHARE until this transaction ends, so a new leader
        (which takes it FOR UPDATE) waits for this write, and a write that
        starts after a takeover sees the new epoch and is refused."""
        row = await fetch_one(
            conn,
            "SELECT 1 AS ok FROM leader_lease WHERE id = 1 AND epoch = %s "
            "AND expires_at > clock_timestamp() FOR KEY SHARE",
            [epoch],
        )
        if row is None:
            raise StoreUnavailable(
                f"this control plane's lease (epoch {epoch}) is lost or expired: "
                "it is no longer the leader and writes nothing"
            )
