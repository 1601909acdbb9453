"""The SQLite schema: its migrations, how they are applied, and reading a
file's schema version without opening it as a store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from controlplane.store.base import refuse_newer_schema

log = logging.getLogger(__name__)

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


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations `conn`'s database lacks, one transaction each."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    current = row["version"] if row else 0
    refuse_newer_schema(current, len(MIGRATIONS))
    for number in range(current, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_sql(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (number + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("event=store_migrated version=%d", number + 1)


def use_incremental_vacuum(conn: sqlite3.Connection, path: str) -> None:
    """With auto_vacuum=INCREMENTAL, compact() gives the pages that retention
    freed back to the file system. SQLite applies a change of auto_vacuum
    only through a VACUUM, so a database made before this version is
    rewritten once, here, at the first start after the upgrade (it takes
    about as long, and as much free disk, as copying the file)."""
    if path == ":memory:" or conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")
    log.info("event=store_vacuumed auto_vacuum=incremental")


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


def split_sql(script: str) -> list[str]:
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
