"""The cluster's identity and leadership in PostgreSQL: one lease row whose
epoch grows with each new leader (docs/ha.md); the fence that checks it on
every write is in postgres/connection.py."""

from __future__ import annotations

import logging

from controlplane.store.base import Lease
from controlplane.store.postgres.connection import PostgresConnection
from controlplane.store.postgres.sql import Conn, fetch_one

log = logging.getLogger(__name__)


class PostgresCluster(PostgresConnection):
    async def cluster_id(self) -> str:
        async def q(conn: Conn) -> str:
            row = await fetch_one(conn, "SELECT id FROM cluster")
            assert row is not None, "the first migration makes the cluster id"
            return str(row["id"])

        return await self._read(q)

    async def acquire_lease(
        self, holder: str, api_address: str, agent_address: str, seconds: float
    ) -> Lease:
        """One transaction on the lease row, locked FOR UPDATE: that waits for
        the writes in flight of the current holder (they hold it FOR KEY
        SHARE, see _check_fence), so a taker never overlaps a fenced write;
        lock_timeout keeps a holder stuck mid-transaction (paused) from
        blocking the taker for long (its connection's transaction is then
        ended by idle_in_transaction_session_timeout)."""

        async def tx(conn: Conn) -> Lease:
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            row = await fetch_one(
                conn,
                "SELECT holder, epoch, api_address, agent_address, "
                "EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 AS left_s "
                "FROM leader_lease WHERE id = 1 FOR UPDATE",
            )
            assert row is not None, "migration 2 makes the lease row"
            live = row["left_s"] > 0
            if live and row["holder"] != holder:
                return Lease(
                    row["holder"],
                    int(row["epoch"]),
                    row["api_address"],
                    row["agent_address"],
                    float(row["left_s"]),
                )
            taking = row["holder"] != holder or not live
            epoch = int(row["epoch"]) + (1 if row["holder"] != holder else 0)
            await conn.execute(
                "UPDATE leader_lease SET holder = %s, epoch = %s, api_address = %s, "
                "agent_address = %s, expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE id = 1",
                [holder, epoch, api_address, agent_address, seconds],
            )
            if taking:
                log.info("event=lease_taken holder=%s epoch=%d", holder, epoch)
            return Lease(holder, epoch, api_address, agent_address, seconds)

        return await self._call(tx, fenced=False)

    async def release_lease(self, holder: str) -> None:
        await self._call(
            lambda conn: conn.execute(
                "UPDATE leader_lease SET expires_at = clock_timestamp() "
                "WHERE id = 1 AND holder = %s AND expires_at > clock_timestamp()",
                [holder],
            ),
            fenced=False,
        )

    async def set_fence(self, epoch: int | None) -> None:
        self._fence = epoch
