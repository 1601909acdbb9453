"""SQLite backend of the Store: WAL mode, versioned schema, one transaction per change.

sqlite3 is blocking, so every call runs on one dedicated thread. One thread also
serialises writers, which is what SQLite wants anyway.

One module per concern, each a part of `SqliteStore` built on the connection
(sqlite/connection.py): schema.py (migrations), codespecs.py, runs.py,
cluster.py (cluster id, leadership), nodes.py, tokens.py, registry_logins.py,
logs.py, retention.py, buffers.py.
"""

from __future__ import annotations

from controlplane.store.log_marker import MARKER_ROOM, MARKER_SEQUENCE
from controlplane.store.micros import from_micros, to_micros
from controlplane.store.recent_runs import RECENT_RUNS
from controlplane.store.sqlite.buffers import SqliteBuffers
from controlplane.store.sqlite.cluster import SqliteCluster
from controlplane.store.sqlite.codespecs import SqliteCodespecs
from controlplane.store.sqlite.file_lock import lock_database
from controlplane.store.sqlite.logs import SqliteLogs
from controlplane.store.sqlite.nodes import SqliteNodes
from controlplane.store.sqlite.registry_logins import SqliteRegistryLogins
from controlplane.store.sqlite.retention import SqliteRetention
from controlplane.store.sqlite.runs import SqliteRuns
from controlplane.store.sqlite.schema import MIGRATIONS, schema_version, split_sql
from controlplane.store.sqlite.tokens import SqliteTokens

_split_sql = split_sql  # the name tests used before the split


class SqliteStore(
    SqliteCodespecs,
    SqliteRuns,
    SqliteCluster,
    SqliteNodes,
    SqliteTokens,
    SqliteRegistryLogins,
    SqliteLogs,
    SqliteRetention,
    SqliteBuffers,
):
    """Store implementation on a local SQLite file (or ':memory:' for tests)."""


__all__ = [
    "MARKER_ROOM",
    "MARKER_SEQUENCE",
    "MIGRATIONS",
    "RECENT_RUNS",
    "SqliteStore",
    "_split_sql",
    "from_micros",
    "lock_database",
    "schema_version",
    "split_sql",
    "to_micros",
]
