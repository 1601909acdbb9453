"""The cluster's identity and leadership in SQLite, where the file lock
already makes one control plane the only one."""

from __future__ import annotations

import sqlite3

from controlplane.store.base import Lease
from controlplane.store.sqlite.connection import SqliteConnection


class SqliteCluster(SqliteConnection):
    async def cluster_id(self) -> str:
        def q() -> str:
            return str(self._db.execute("SELECT id FROM cluster").fetchone()["id"])

        return await self._call(q)

    async def acquire_lease(
        self, holder: str, api_address: str, agent_address: str, seconds: float
    ) -> Lease:
        """The file lock already makes this the only control plane: the first
        holder to ask takes the next epoch and keeps it for the store's life."""
        if self._lease is not None:
            return self._lease

        def tx(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE leader SET holder = ?, epoch = epoch + 1 WHERE id = 1", [holder])
            return int(conn.execute("SELECT epoch FROM leader WHERE id = 1").fetchone()["epoch"])

        epoch = await self._call(self._tx, tx)
        self._lease = Lease(holder, epoch, api_address, agent_address, float("inf"))
        return self._lease

    async def release_lease(self, holder: str) -> None:
        """Nothing to hand over: the file lock goes with the store."""

    async def set_fence(self, epoch: int | None) -> None:
        """Nothing to fence: the file lock keeps other control planes out."""
