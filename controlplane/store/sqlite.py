"""SQLite backend of the Store: WAL mode, versioned schema, one transaction per change.

sqlite3 is blocking, so every call runs on one dedicated thread. One thread also
serialises writers, which is what SQLite wants anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from controlplane.core.auth import ApiToken, JoinToken, Role
from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.codespec import Codespec, from_document, to_document
from controlplane.core.errors import AlreadyExists, Conflict, StoreUnavailable
from controlplane.core.images import StoredLogin
from controlplane.core.logs import LogLine, StoredLine
from controlplane.core.nodes import Node
from controlplane.core.runs import TERMINAL, Run
from controlplane.store.base import (
    BufferChange,
    CodespecOrder,
    CodespecPage,
    KnownRequest,
    Lease,
    SchemaTooNew,
    Store,
    StoreInUse,
)
from controlplane.store.documents import node_from_doc, node_to_doc, run_from_doc, run_to_doc

log = logging.getLogger(__name__)
T = TypeVar("T")
MARKER_SEQUENCE = -1
"""The line number of a run's marker line (dropped lines); agents number lines from 0."""
MARKER_ROOM = 200
"""Bytes kept free for the marker line when dropping a run's oldest lines."""

RECENT_RUNS = 2_000
"""Finished runs kept decoded, the most recently read first: enough for the
newest pages of lists and watches. Not more: every cached run is a few hundred
Python objects that each full garbage collection walks (20,000 of them put
GetRun's p99 at 500 calls/s at 47-59 ms instead of 2-9 ms; bench_api.py)."""

# Append-only list of migrations; schema version N means MIGRATIONS[:N] are applied.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE codespecs (
        name        TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        kind        TEXT    NOT NULL,
        spec        TEXT    NOT NULL,   -- JSON document, Tyger camelCase fields
        created_at  INTEGER NOT NULL,   -- microseconds since the epoch, UTC
        PRIMARY KEY (name, version)
    );
    CREATE INDEX codespecs_created ON codespecs (created_at);
    """,
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        status      TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,   -- microseconds since the epoch, UTC
        doc         TEXT    NOT NULL    -- JSON document (store/documents.py)
    );
    CREATE INDEX runs_status ON runs (status);
    CREATE TABLE run_tags (
        run_id  INTEGER NOT NULL REFERENCES runs (id),
        key     TEXT    NOT NULL,
        value   TEXT    NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE INDEX run_tags_kv ON run_tags (key, value);
    CREATE TABLE nodes (
        name    TEXT PRIMARY KEY,
        doc     TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE logs (
        id        INTEGER PRIMARY KEY,   -- arrival order
        run_id    INTEGER NOT NULL,
        role      TEXT    NOT NULL,
        replica   INTEGER NOT NULL,
        stream    TEXT    NOT NULL,
        sequence  INTEGER NOT NULL,
        ts        INTEGER NOT NULL,      -- nanoseconds since the epoch
        text      TEXT    NOT NULL,
        UNIQUE (run_id, role, replica, stream, sequence)
    );
    CREATE INDEX logs_time ON logs (run_id, ts, role, replica, stream, sequence);
    """,
    """
    CREATE INDEX logs_arrival ON logs (run_id, id);  -- follows read new lines by arrival
    """,
    """
    DROP INDEX logs_time;
    CREATE INDEX logs_time ON logs (run_id, ts, id);  -- time order, arrival breaks ties
    """,
    """
    CREATE TABLE tokens (
        name        TEXT PRIMARY KEY,
        role        INTEGER NOT NULL,
        hash        TEXT    NOT NULL UNIQUE,  -- SHA-256 of the secret (the secret is not kept)
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER,
        revoked_at  INTEGER
    );
    CREATE TABLE join_tokens (
        hash        TEXT PRIMARY KEY,
        pools       TEXT    NOT NULL,         -- JSON list
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_by     TEXT    NOT NULL DEFAULT ''
    );
    CREATE TABLE removed_nodes (
        name        TEXT PRIMARY KEY,
        removed_at  INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE registry_logins (
        registry    TEXT PRIMARY KEY,         -- host[:port], normalized
        username    TEXT NOT NULL,
        sealed      BLOB NOT NULL,            -- the password, AES-GCM (security/sealing.py)
        updated_at  INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE cluster (
        id  TEXT NOT NULL   -- random, made once: names and labels of this cluster's containers
    );
    INSERT INTO cluster (id) SELECT lower(hex(randomblob(16)));
    """,
    """
    CREATE TABLE run_requests (
        request_id  TEXT PRIMARY KEY,     -- the client's id of a CreateRun
        run_id      INTEGER NOT NULL,     -- the run it created
        created_at  INTEGER NOT NULL      -- microseconds: a retry within 24 h returns run_id
    );
    CREATE INDEX run_requests_created ON run_requests (created_at);
    """,
    """
    ALTER TABLE logs ADD COLUMN partial INTEGER NOT NULL DEFAULT 0;  -- 1: the line goes on
    """,
    """
    -- Retention: when a run finished (microseconds, UTC), from its document.
    ALTER TABLE runs ADD COLUMN finished_at INTEGER;
    UPDATE runs SET finished_at = CAST(
        (julianday(json_extract(doc, '$.finishedAt')) - 2440587.5) * 86400000000 AS INTEGER
    ) WHERE json_extract(doc, '$.finishedAt') IS NOT NULL;
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    -- The bytes of log text stored per run (kept by triggers), and how many of
    -- its oldest lines were dropped to keep it within --max-log-bytes-per-run.
    CREATE TABLE run_log_usage (
        run_id   INTEGER PRIMARY KEY,
        bytes    INTEGER NOT NULL DEFAULT 0,
        dropped  INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO run_log_usage (run_id, bytes)
        SELECT run_id, SUM(length(CAST(text AS BLOB))) FROM logs GROUP BY run_id;
    CREATE TRIGGER logs_usage_insert AFTER INSERT ON logs BEGIN
        INSERT INTO run_log_usage (run_id, bytes)
            VALUES (NEW.run_id, length(CAST(NEW.text AS BLOB)))
            ON CONFLICT (run_id) DO UPDATE SET bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER logs_usage_delete AFTER DELETE ON logs BEGIN
        UPDATE run_log_usage SET bytes = bytes - length(CAST(OLD.text AS BLOB))
        WHERE run_id = OLD.run_id;
    END;
    """,
    """
    -- What a CreateRun request asked for (a hash): a retry must ask the same.
    ALTER TABLE run_requests ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    """,
    """
    -- Buffer records (their bytes are in the data plane). Times in microseconds, UTC.
    CREATE TABLE IF NOT EXISTS buffers (
        id            TEXT PRIMARY KEY,           -- 26 lowercase base32 characters
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER,                    -- NULL: never
        soft_deleted  INTEGER NOT NULL DEFAULT 0,
        location      TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS buffers_newest ON buffers (soft_deleted, created_at, id);
    CREATE INDEX IF NOT EXISTS buffers_expiry ON buffers (expires_at)
        WHERE expires_at IS NOT NULL;
    CREATE TABLE IF NOT EXISTS buffer_tags (
        buffer_id  TEXT NOT NULL REFERENCES buffers (id) ON DELETE CASCADE,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        PRIMARY KEY (buffer_id, key)
    );
    CREATE INDEX IF NOT EXISTS buffer_tags_kv ON buffer_tags (key, value);
    """,
    """
    -- The leadership epoch: one above the previous start's, so agents that saw
    -- an older control plane's commands take this one's (docs/ha.md).
    CREATE TABLE IF NOT EXISTS leader (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        holder  TEXT    NOT NULL,
        epoch   INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO leader (id, holder, epoch) VALUES (1, '', 0);
    """,
]


def to_micros(ts: datetime) -> int:
    """UTC datetime -> integer microseconds (exact, sortable)."""
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _maybe_micros(ts: datetime | None) -> int | None:
    return None if ts is None else to_micros(ts)


def _maybe_time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def from_micros(value: int) -> datetime:
    """Inverse of to_micros."""
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


class SqliteStore(Store):
    """Store implementation on a local SQLite file (or ':memory:' for tests)."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._recent: OrderedDict[int, tuple[str, Run]] = OrderedDict()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._lease: Lease | None = None

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating directories and the file if needed) and migrate.

        A file is locked first (`<file>.lock`, until close or the process
        ends): two control planes on one file would run two schedulers."""
        store = cls(path)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            store._lock_fd = lock_database(Path(path))
        try:
            await store._call(store._connect)
        except BaseException:
            await store.close()
            raise
        return store

    def _connect(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the control plane acts on it, so not
        # even a power loss forgets a placement whose starts were sent. It costs
        # about 0.16 ms more per transaction here (0.33 ms instead of 0.17 ms).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file: in force at once
        self._migrate()
        self._use_incremental_vacuum()

    def _migrate(self) -> None:
        conn = self._db
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = row["version"] if row else 0
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database schema version {current} is newer than this control plane "
                f"({len(MIGRATIONS)}); upgrade muster"
            )
        for number in range(current, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(MIGRATIONS[number]):
                    conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version VALUES (?)", (number + 1,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("event=store_migrated version=%d", number + 1)

    def _use_incremental_vacuum(self) -> None:
        """With auto_vacuum=INCREMENTAL, compact() gives the pages that retention
        freed back to the file system. SQLite applies a change of auto_vacuum
        only through a VACUUM, so a database made before this version is
        rewritten once, here, at the first start after the upgrade (it takes
        about as long, and as much free disk, as copying the file)."""
        conn = self._db
        if self._path == ":memory:" or conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        log.info("event=store_vacuumed auto_vacuum=incremental")

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is closed"
        return self._conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OverflowError) as exc:
            if isinstance(exc, sqlite3.IntegrityError):
                raise
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn inside one IMMEDIATE transaction (on the store thread)."""
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        """Close the connection and stop the store thread."""
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    # -- codespecs ---------------------------------------------------------

    @staticmethod
    def _codespec(row: sqlite3.Row) -> Codespec:
        return from_document(
            row["name"], json.loads(row["spec"]), row["version"], from_micros(row["created_at"])
        )

    async def latest_codespec(self, name: str) -> Codespec | None:
        def q() -> Codespec | None:
            row = self._db.execute(
                "SELECT * FROM codespecs WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
            return self._codespec(row) if row else None

        return await self._call(q)

    async def get_codespec(self, name: str, version: int) -> Codespec | None:
        def q() -> Codespec | None:
            row = self._db.execute(
                "SELECT * FROM codespecs WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            return self._codespec(row) if row else None

        return await self._call(q)

    async def insert_codespec(self, spec: Codespec) -> Codespec:
        assert spec.created_at is not None and spec.version >= 1
        created_at = to_micros(spec.created_at)

        def tx(conn: sqlite3.Connection) -> Codespec:
            row = conn.execute(
                "SELECT MAX(version) AS v FROM codespecs WHERE name = ?", (spec.name,)
            ).fetchone()
            if (row["v"] or 0) + 1 != spec.version:
                raise Conflict(f"codespec {spec.name} is at version {row['v']}")
            conn.execute(
                "INSERT INTO codespecs (name, version, kind, spec, created_at) VALUES (?,?,?,?,?)",
                (
                    spec.name,
                    spec.version,
                    spec.kind,
                    json.dumps(to_document(spec)),
                    created_at,
                ),
            )
            return spec

        return await self._call(self._tx, tx)

    async def list_codespecs(
        self,
        *,
        prefix: str,
        order: CodespecOrder,
        limit: int,
        after: tuple[int, str] | None,
    ) -> CodespecPage:
        def q() -> CodespecPage:
            # A plain, case-sensitive prefix (LIKE ignores ASCII case and refuses
            # patterns over 50,000 bytes); any length, no escaping.
            params: list[Any] = [len(prefix), prefix]
            sql = (
                "WITH heads AS (SELECT name, MAX(version) AS version, MIN(created_at) AS born "
                "FROM codespecs WHERE substr(name, 1, ?) = ? GROUP BY name) "
                "SELECT c.*, h.born FROM heads h JOIN codespecs c "
                "ON c.name = h.name AND c.version = h.version"
            )
            if order == "name":
                if after is not None:
                    sql += " WHERE c.name > ?"
                    params.append(after[1])
                sql += " ORDER BY c.name"
            else:
                if after is not None:
                    sql += " WHERE (h.born < ?) OR (h.born = ? AND c.name > ?)"
                    params += [after[0], after[0], after[1]]
                sql += " ORDER BY h.born DESC, c.name"
            sql += " LIMIT ?"
            params.append(limit + 1)
            rows = self._db.execute(sql, params).fetchall()
            items = [self._codespec(r) for r in rows[:limit]]
            cursor = None
            if len(rows) > limit:
                last = rows[limit - 1]
                cursor = (last["born"], last["name"])
            return CodespecPage(items, cursor)

        return await self._call(q)

    # -- runs ----------------------------------------------------------------

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

    def _write_run(self, conn: sqlite3.Connection, run: Run) -> None:
        updated = conn.execute(
            "UPDATE runs SET status = ?, doc = ?, finished_at = ? WHERE id = ?",
            (run.status, json.dumps(run_to_doc(run)), _maybe_micros(run.finished_at), run.id),
        ).rowcount
        if updated != 1:
            raise KeyError(f"run {run.id} does not exist")
        conn.execute("DELETE FROM run_tags WHERE run_id = ?", (run.id,))
        conn.executemany(
            "INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?)",
            [(run.id, k, v) for k, v in run.tags.items()],
        )

    def _decoded(self, run_id: int, doc: str) -> Run:
        """The run a stored document holds. Finished runs are read far more
        often than they change (lists, watches, `run show`), so the decoded
        form of recently read ones is kept, keyed by the document's exact
        text: any change to the row (tags, retention) is a different text.
        Callers never change a run they read (the orchestrator works on copies).
        On the store thread only."""
        cached = self._recent.get(run_id)
        if cached is not None and cached[0] == doc:
            self._recent.move_to_end(run_id)
            return cached[1]
        run = run_from_doc(json.loads(doc))
        if run.terminal:
            self._recent[run_id] = (doc, run)
            if len(self._recent) > RECENT_RUNS:
                self._recent.popitem(last=False)
        return run

    async def save_run(self, run: Run) -> None:
        await self.save_runs([run])

    async def save_runs(self, runs: Sequence[Run]) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            for run in runs:
                self._write_run(conn, run)

        await self._call(self._tx, tx)

    async def get_run(self, run_id: int) -> Run | None:
        def q() -> Run | None:
            row = self._db.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
            return self._decoded(run_id, row["doc"]) if row else None

        return await self._call(q)

    @staticmethod
    def _filters(
        tags: dict[str, str], since: datetime | None, statuses: frozenset[str] = frozenset()
    ) -> tuple[str, list[Any]]:
        clauses, params = ["1 = 1"], list[Any]()
        for key, value in sorted(tags.items()):
            clauses.append("id IN (SELECT run_id FROM run_tags WHERE key = ? AND value = ?)")
            params += [key, value]
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(to_micros(since))
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params += sorted(statuses)
        return " AND ".join(clauses), params

    async def list_runs(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[Run], bool]:
        def q() -> tuple[list[Run], bool]:
            where, params = self._filters(tags, since, statuses)
            if before_id is not None:
                where += " AND id < ?"
                params.append(before_id)
            rows = self._db.execute(
                f"SELECT id, doc FROM runs WHERE {where} ORDER BY id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            runs = [self._decoded(r["id"], r["doc"]) for r in rows[:limit]]
            return runs, len(rows) > limit

        return await self._call(q)

    async def count_runs(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        def q() -> dict[str, int]:
            where, params = self._filters(tags, since)
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

    # -- nodes ---------------------------------------------------------------

    async def save_node(self, node: Node) -> None:
        doc = json.dumps(node_to_doc(node))
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO nodes (name, doc) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                (node.name, doc),
            ),
        )

    async def list_nodes(self) -> list[Node]:
        def q() -> list[Node]:
            rows = self._db.execute("SELECT doc FROM nodes ORDER BY name").fetchall()
            return [node_from_doc(json.loads(r["doc"])) for r in rows]

        return await self._call(q)

    async def delete_node(self, name: str, now: datetime) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO removed_nodes (name, removed_at) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET removed_at = excluded.removed_at",
                (name, to_micros(now)),
            )

        await self._call(self._tx, tx)

    async def node_removed_at(self, name: str) -> datetime | None:
        def q() -> datetime | None:
            row = self._db.execute(
                "SELECT removed_at FROM removed_nodes WHERE name = ?", (name,)
            ).fetchone()
            return from_micros(row["removed_at"]) if row else None

        return await self._call(q)

    # -- tokens --------------------------------------------------------------

    @staticmethod
    def _token(row: sqlite3.Row) -> ApiToken:
        return ApiToken(
            name=row["name"],
            role=Role(row["role"]),
            hash=row["hash"],
            created_at=from_micros(row["created_at"]),
            expires_at=_maybe_time(row["expires_at"]),
            revoked_at=_maybe_time(row["revoked_at"]),
        )

    async def insert_token(self, token: ApiToken) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO tokens (name, role, hash, created_at, expires_at, revoked_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        token.name,
                        int(token.role),
                        token.hash,
                        to_micros(token.created_at),
                        _maybe_micros(token.expires_at),
                        _maybe_micros(token.revoked_at),
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(
                    f"a token named '{token.name}' exists already; choose another name"
                ) from None

        await self._call(self._tx, tx)

    async def list_tokens(self) -> list[ApiToken]:
        def q() -> list[ApiToken]:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY name").fetchall()
            return [self._token(r) for r in rows]

        return await self._call(q)

    async def revoke_token(self, name: str, now: datetime) -> ApiToken | None:
        def tx(conn: sqlite3.Connection) -> ApiToken | None:
            conn.execute(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?",
                (to_micros(now), name),
            )
            row = conn.execute("SELECT * FROM tokens WHERE name = ?", (name,)).fetchone()
            return self._token(row) if row else None

        return await self._call(self._tx, tx)

    async def insert_join_token(self, token: JoinToken) -> None:
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO join_tokens (hash, pools, created_at, expires_at, used_by) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    token.hash,
                    json.dumps(list(token.pools)),
                    to_micros(token.created_at),
                    to_micros(token.expires_at),
                    token.used_by,
                ),
            ),
        )

    async def use_join_token(self, hash: str, node: str, now: datetime) -> JoinToken | None:
        def tx(conn: sqlite3.Connection) -> JoinToken | None:
            spent = conn.execute(
                "UPDATE join_tokens SET used_by = ? "
                "WHERE hash = ? AND used_by = '' AND expires_at > ?",
                (node, hash, to_micros(now)),
            ).rowcount
            if not spent:
                return None
            row = conn.execute("SELECT * FROM join_tokens WHERE hash = ?", (hash,)).fetchone()
            return JoinToken(
                hash=row["hash"],
                pools=tuple(json.loads(row["pools"])),
                created_at=from_micros(row["created_at"]),
                expires_at=from_micros(row["expires_at"]),
                used_by=row["used_by"],
            )

        return await self._call(self._tx, tx)

    # -- registry logins -----------------------------------------------------

    async def save_registry_login(self, login: StoredLogin) -> None:
        assert login.updated_at is not None
        await self._call(
            self._tx,
            lambda conn: conn.execute(
                "INSERT INTO registry_logins (registry, username, sealed, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (registry) DO UPDATE SET "
                "username = excluded.username, sealed = excluded.sealed, "
                "updated_at = excluded.updated_at",
                (login.registry, login.username, login.sealed, to_micros(login.updated_at)),
            ),
        )

    async def list_registry_logins(self) -> list[StoredLogin]:
        def q() -> list[StoredLogin]:
            rows = self._db.execute("SELECT * FROM registry_logins ORDER BY registry").fetchall()
            return [
                StoredLogin(
                    r["registry"], r["username"], bytes(r["sealed"]), from_micros(r["updated_at"])
                )
                for r in rows
            ]

        return await self._call(q)

    async def delete_registry_login(self, registry: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute("DELETE FROM registry_logins WHERE registry = ?", (registry,)).rowcount
            )

        return await self._call(self._tx, tx)

    # -- logs ----------------------------------------------------------------

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

    @staticmethod
    def _line(row: sqlite3.Row) -> StoredLine:
        return StoredLine(
            row["id"],
            LogLine(
                row["run_id"],
                row["role"],
                row["replica"],
                row["stream"],
                row["sequence"],
                row["ts"],
                row["text"],
                bool(row["partial"]),
            ),
        )

    async def last_log_id(self, run_id: int) -> int:
        def q() -> int:
            row = self._db.execute(
                "SELECT MAX(id) AS m FROM logs WHERE run_id = ?", (run_id,)
            ).fetchone()
            return row["m"] or 0

        return await self._call(q)

    @staticmethod
    def _log_filter(run_id: int, since_ns: int | None, max_id: int | None) -> tuple[str, list[Any]]:
        sql, params = "run_id = ?", [run_id]
        if since_ns is not None:
            sql += " AND ts >= ?"
            params.append(since_ns)
        if max_id is not None:
            sql += " AND id <= ?"
            params.append(max_id)
        return sql, params

    async def read_logs(
        self,
        run_id: int,
        *,
        since_ns: int | None,
        max_id: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[StoredLine]:
        def q() -> list[StoredLine]:
            where, params = self._log_filter(run_id, since_ns, max_id)
            if after is not None:
                where += " AND (ts, id) > (?, ?)"
                params += list(after)
            rows = self._db.execute(
                f"SELECT * FROM logs WHERE {where} ORDER BY ts, id LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [self._line(r) for r in rows]

        return await self._call(q)

    async def tail_logs(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> list[StoredLine]:
        def q() -> list[StoredLine]:
            where, params = self._log_filter(run_id, since_ns, max_id)
            rows = self._db.execute(
                f"SELECT * FROM logs WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?",
                [*params, count],
            ).fetchall()
            return [self._line(r) for r in reversed(rows)]

        return await self._call(q)

    async def tail_start(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> tuple[int, int] | None:
        def q() -> tuple[int, int] | None:
            where, params = self._log_filter(run_id, since_ns, max_id)
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
            rows = self._db.execute(
                "SELECT * FROM logs WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (run_id, after_id, limit),
            ).fetchall()
            return [self._line(r) for r in rows]

        return await self._call(q)

    # -- retention -------------------------------------------------------------

    async def finished_before(self, before: datetime, limit: int) -> list[int]:
        def q() -> list[int]:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ? "
                "ORDER BY finished_at, id LIMIT ?",
                (to_micros(before), limit),
            ).fetchall()
            return [int(r["id"]) for r in rows]

        return await self._call(q)

    async def delete_logs(self, run_id: int, limit: int) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE run_id = ? LIMIT ?)",
                (run_id, limit),
            ).rowcount

        return await self._call(self._tx, tx)

    async def delete_runs(self, run_ids: list[int]) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(run_ids))
            for table in ("logs", "run_log_usage", "run_tags", "run_requests"):
                conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", run_ids)
            return conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", run_ids).rowcount

        return await self._call(self._tx, tx) if run_ids else 0

    async def log_usage(self, run_id: int) -> tuple[int, int]:
        def q() -> tuple[int, int]:
            row = self._db.execute(
                "SELECT bytes, dropped FROM run_log_usage WHERE run_id = ?", (run_id,)
            ).fetchone()
            return (int(row["bytes"]), int(row["dropped"])) if row else (0, 0)

        return await self._call(q)

    async def runs_over_log_cap(self, max_bytes: int, limit: int) -> list[int]:
        def q() -> list[int]:
            rows = self._db.execute(
                "SELECT run_id FROM run_log_usage WHERE bytes > ? ORDER BY bytes DESC LIMIT ?",
                (max_bytes, limit),
            ).fetchall()
            return [int(r["run_id"]) for r in rows]

        return await self._call(q)

    async def drop_oldest_logs(self, run_id: int, max_bytes: int, limit: int, marker: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            usage = conn.execute(
                "SELECT bytes, dropped FROM run_log_usage WHERE run_id = ?", (run_id,)
            ).fetchone()
            if usage is None or usage["bytes"] <= max_bytes:
                return 0
            excess = usage["bytes"] - max_bytes + MARKER_ROOM
            rows = conn.execute(
                "SELECT id, ts, length(CAST(text AS BLOB)) AS n FROM logs "
                "WHERE run_id = ? AND sequence >= 0 ORDER BY ts, id LIMIT ?",
                (run_id, limit),
            ).fetchall()
            freed, last = 0, None
            for row in rows:
                freed, last = freed + row["n"], row
                if freed >= excess:
                    break
            if last is None:
                return 0
            dropped = conn.execute(
                "DELETE FROM logs WHERE run_id = ? AND sequence >= 0 AND (ts, id) <= (?, ?)",
                (run_id, last["ts"], last["id"]),
            ).rowcount
            total = usage["dropped"] + dropped
            conn.execute("UPDATE run_log_usage SET dropped = ? WHERE run_id = ?", (total, run_id))
            # One marker line, first of what is left, says how many were dropped in all.
            conn.execute(
                "DELETE FROM logs WHERE run_id = ? AND sequence = ?", (run_id, MARKER_SEQUENCE)
            )
            conn.execute(
                "INSERT INTO logs (run_id, role, replica, stream, sequence, ts, text) "
                "VALUES (?, 'job', 0, 'stderr', ?, ?, ?)",
                (run_id, MARKER_SEQUENCE, max(0, last["ts"] - 1), marker.format(dropped=total)),
            )
            return dropped

        return await self._call(self._tx, tx)

    async def compact(self, pages: int) -> int:
        def q() -> int:
            conn = self._db
            before = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if before:
                conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
            after = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if before and not after:  # done: the write-ahead log goes back to nothing too
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return int(before - after)

        return await self._call(q)

    # -- buffers ---------------------------------------------------------------

    @staticmethod
    def _buffers(conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> list[Buffer]:
        """Records from buffer rows, with their tags (one more query)."""
        tags: dict[str, dict[str, str]] = {r["id"]: {} for r in rows}
        for start in range(0, len(rows), 500):
            chunk = [r["id"] for r in rows[start : start + 500]]
            for t in conn.execute(
                f"SELECT buffer_id, key, value FROM buffer_tags WHERE buffer_id IN "
                f"({','.join('?' * len(chunk))}) ORDER BY key",
                chunk,
            ):
                tags[t["buffer_id"]][t["key"]] = t["value"]
        return [
            Buffer(
                id=r["id"],
                created_at=from_micros(r["created_at"]),
                tags=tags[r["id"]],
                expires_at=_maybe_time(r["expires_at"]),
                soft_deleted=bool(r["soft_deleted"]),
                location=r["location"],
            )
            for r in rows
        ]

    @staticmethod
    def _write_buffer(conn: sqlite3.Connection, buffer: Buffer, *, new: bool) -> None:
        values = (
            to_micros(buffer.created_at),
            _maybe_micros(buffer.expires_at),
            int(buffer.soft_deleted),
            buffer.location,
            buffer.id,
        )
        if new:
            conn.execute(
                "INSERT INTO buffers (created_at, expires_at, soft_deleted, location, id) "
                "VALUES (?, ?, ?, ?, ?)",
                values,
            )
        else:
            conn.execute(
                "UPDATE buffers SET created_at = ?, expires_at = ?, soft_deleted = ?, "
                "location = ? WHERE id = ?",
                values,
            )
            conn.execute("DELETE FROM buffer_tags WHERE buffer_id = ?", (buffer.id,))
        conn.executemany(
            "INSERT INTO buffer_tags (buffer_id, key, value) VALUES (?, ?, ?)",
            [(buffer.id, k, v) for k, v in buffer.tags.items()],
        )

    @staticmethod
    def _buffer_filter(flt: BufferFilter, now: datetime) -> tuple[str, list[Any]]:
        clauses = ["soft_deleted = ?", "(expires_at IS NULL OR expires_at > ?)"]
        params: list[Any] = [int(flt.soft_deleted), to_micros(now)]
        for key, value in sorted(flt.tags.items()):
            clauses.append("id IN (SELECT buffer_id FROM buffer_tags WHERE key = ? AND value = ?)")
            params += [key, value]
        for key, value in sorted(flt.exclude_tags.items()):
            clauses.append(
                "id NOT IN (SELECT buffer_id FROM buffer_tags WHERE key = ? AND value = ?)"
            )
            params += [key, value]
        return " AND ".join(clauses), params

    def _apply(
        self,
        conn: sqlite3.Connection,
        current: list[tuple[str, Buffer | None]],
        change: BufferChange,
    ) -> list[Buffer]:
        stored = []
        for buffer_id, buffer in current:
            after = change(buffer_id, buffer)
            if after is not None:
                assert after.id == buffer_id and buffer is not None, "change keeps the id"
                self._write_buffer(conn, after, new=False)
                stored.append(after)
        return stored

    async def insert_buffer(self, buffer: Buffer) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            try:
                self._write_buffer(conn, buffer, new=True)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"a buffer with the id '{buffer.id}' exists already") from None

        await self._call(self._tx, tx)

    async def get_buffer(self, buffer_id: str) -> Buffer | None:
        def q() -> Buffer | None:
            rows = self._db.execute("SELECT * FROM buffers WHERE id = ?", (buffer_id,)).fetchall()
            return self._buffers(self._db, rows)[0] if rows else None

        return await self._call(q)

    async def list_buffers(
        self, flt: BufferFilter, *, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Buffer], bool]:
        def q() -> tuple[list[Buffer], bool]:
            where, params = self._buffer_filter(flt, now)
            if after is not None:
                where += " AND (created_at, id) < (?, ?)"
                params += list(after)
            rows = self._db.execute(
                f"SELECT * FROM buffers WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
            return self._buffers(self._db, rows[:limit]), len(rows) > limit

        return await self._call(q)

    async def count_buffers(self, flt: BufferFilter, *, now: datetime) -> int:
        def q() -> int:
            where, params = self._buffer_filter(flt, now)
            row = self._db.execute(f"SELECT COUNT(*) FROM buffers WHERE {where}", params)
            return int(row.fetchone()[0])

        return await self._call(q)

    async def change_buffers(self, ids: list[str], change: BufferChange) -> list[Buffer]:
        def tx(conn: sqlite3.Connection) -> list[Buffer]:
            current = []
            for buffer_id in ids:
                rows = conn.execute("SELECT * FROM buffers WHERE id = ?", (buffer_id,)).fetchall()
                current.append((buffer_id, self._buffers(conn, rows)[0] if rows else None))
            return self._apply(conn, current, change)

        return await self._call(self._tx, tx)

    async def change_matching(
        self, flt: BufferFilter, *, now: datetime, change: BufferChange
    ) -> list[Buffer]:
        def tx(conn: sqlite3.Connection) -> list[Buffer]:
            where, params = self._buffer_filter(flt, now)
            rows = conn.execute(
                f"SELECT * FROM buffers WHERE {where} ORDER BY created_at DESC, id DESC", params
            ).fetchall()
            found = self._buffers(conn, rows)
            return self._apply(conn, [(b.id, b) for b in found], change)

        return await self._call(self._tx, tx)

    async def expired_buffers(self, now: datetime, *, soft_deleted: bool, limit: int) -> list[str]:
        def q() -> list[str]:
            rows = self._db.execute(
                "SELECT id FROM buffers WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "AND soft_deleted = ? ORDER BY expires_at, id LIMIT ?",
                (to_micros(now), int(soft_deleted), limit),
            ).fetchall()
            return [r["id"] for r in rows]

        return await self._call(q)

    async def delete_buffers(self, ids: list[str]) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            gone = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM buffer_tags WHERE buffer_id IN ({marks})", chunk)
                gone += conn.execute(f"DELETE FROM buffers WHERE id IN ({marks})", chunk).rowcount
            return gone

        return await self._call(self._tx, tx) if ids else 0


async def schema_version(path: str | Path) -> int:
    """The schema version of a SQLite file (0: no file, or not migrated yet)."""

    def read() -> int:
        if str(path) == ":memory:" or not Path(path).exists():
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # no such table: never migrated
            return 0
        finally:
            conn.close()
        return int(row[0]) if row else 0

    return await asyncio.to_thread(read)


def lock_database(path: Path) -> int:
    """Take an exclusive lock on `<path>.lock` and return its descriptor.

    flock, not a PID file: the kernel drops the lock when the process dies
    (even by SIGKILL), so a crash never leaves a stale lock behind. The file
    holds the owner's PID, only to name it in the refusal."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = ""
        with contextlib.suppress(OSError, ValueError):
            owner = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise StoreInUse(
            f"database {path} is in use by another control plane{owner}: {lock_path} is "
            "locked. Stop that control plane first, or give this one its own --db"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements, at the semicolons that end a
    complete statement: a trigger's body, or a semicolon in a comment or a
    literal, stays inside its statement. Pieces with nothing but comments go."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            code = "\n".join(line.split("--")[0] for line in current.splitlines())
            if code.strip(" \n\t;"):
                statements.append(current.strip())
            current = ""
    return statements
