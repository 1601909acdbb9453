"""PostgreSQL backend of the Store (PostgreSQL 15+, psycopg 3 async, a connection pool).

It keeps the SQLite backend's semantics method by method (the contract suite
runs on both): one transaction per method, times as integer microseconds (so
cursors and comparisons are exact and identical), documents as JSON text,
names compared and ordered byte-wise (COLLATE "C", like SQLite), log text as
bytes (PostgreSQL text cannot hold NUL, container output can).

What differs because several connections write at once:
- Log arrival ids come from a sequence, and a reader follows a run's logs by
  id; so that no line ever commits behind one a reader has already passed,
  everything that adds or removes a run's lines first takes that run's
  transaction-scoped advisory lock (in run id order: no deadlocks).
- Buffer changes lock their rows (SELECT ... FOR UPDATE); SQLite has one
  writer at a time anyway.
- Migrations run in one transaction under an advisory lock, so control planes
  starting together migrate once.

One module per concern, each a part of `PostgresStore` built on the pool
(postgres/connection.py): sql.py (statements, locks, errors), schema.py
(migrations), codespecs.py, runs.py, cluster.py (cluster id, leadership),
nodes.py, tokens.py, registry_logins.py, logs.py, retention.py, buffers.py.
"""

from __future__ import annotations

from controlplane.store.postgres.buffers import PostgresBuffers
from controlplane.store.postgres.cluster import PostgresCluster
from controlplane.store.postgres.codespecs import PostgresCodespecs
from controlplane.store.postgres.connection import IDLE_TX_TIMEOUT_MS, POOL_MAX, POOL_TIMEOUT
from controlplane.store.postgres.logs import PostgresLogs
from controlplane.store.postgres.nodes import PostgresNodes
from controlplane.store.postgres.registry_logins import PostgresRegistryLogins
from controlplane.store.postgres.retention import PostgresRetention
from controlplane.store.postgres.runs import PostgresRuns
from controlplane.store.postgres.schema import MIGRATION_LOCK, MIGRATIONS, migrate
from controlplane.store.postgres.sql import CONNECT_TIMEOUT, LOG_LOCK_CLASS, Conn, redact
from controlplane.store.postgres.tokens import PostgresTokens


class PostgresStore(
    PostgresCodespecs,
    PostgresRuns,
    PostgresCluster,
    PostgresNodes,
    PostgresTokens,
    PostgresRegistryLogins,
    PostgresLogs,
    PostgresRetention,
    PostgresBuffers,
):
    """Store implementation on a PostgreSQL database, through a connection pool."""


__all__ = [
    "CONNECT_TIMEOUT",
    "IDLE_TX_TIMEOUT_MS",
    "LOG_LOCK_CLASS",
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "POOL_MAX",
    "POOL_TIMEOUT",
    "Conn",
    "PostgresStore",
    "migrate",
    "redact",
]
