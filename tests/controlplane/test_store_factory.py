"""--db picks the backend: SQLite paths and URLs, memory:, postgresql://; an
unknown scheme is refused in one line; a SQLite file serves one control plane;
migrations are versioned and `muster-controlplane migrate` applies them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controlplane.core.errors import StoreUnavailable
from controlplane.store.base import SchemaTooNew, StoreInUse
from controlplane.store.factory import (
    migrate_store,
    open_store,
    parse_store_url,
    store_directory,
)
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import MIGRATIONS, SqliteStore
from tests.conftest import BIN, isolated_env, start_process


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("/var/lib/muster/cp.db", "sqlite", "/var/lib/muster/cp.db"),
        ("cp.db", "sqlite", "cp.db"),
        ("./odd:name.db", "sqlite", "./odd:name.db"),
        (":memory:", "sqlite", ":memory:"),
        ("sqlite:///var/lib/muster/cp.db", "sqlite", "/var/lib/muster/cp.db"),
        ("sqlite:rel/cp.db", "sqlite", "rel/cp.db"),
        ("SQLite::memory:", "sqlite", ":memory:"),
        ("memory:", "memory", ""),
        ("postgresql://u@db:5432/muster", "postgresql", "postgresql://u@db:5432/muster"),
        ("postgres://u:pw@db/muster", "postgresql", "postgres://u:pw@db/muster"),
    ],
)
def test_urls_name_their_backend(url: str, kind: str, target: str) -> None:
    parsed = parse_store_url(url)
    assert (parsed.kind, parsed.target) == (kind, target)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u@db/muster", "unknown store 'mysql:'"),
        ("odd:name.db", "a file whose name has a colon: ./odd:name.db"),
        ("postgresql:muster", "write postgresql://USER@HOST:PORT/DB"),
        ("memory:/x", "takes no path"),
        ("sqlite://", "name the file"),
        ("", "--db is empty"),
    ],
)
def test_what_is_not_a_store_is_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="--db") as refused:
        parse_store_url(url)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_only_a_sqlite_file_has_a_directory(tmp_path: Path) -> None:
    assert store_directory(tmp_path / "cp.db") == tmp_path
    assert store_directory(f"sqlite://{tmp_path}/cp.db") == tmp_path
    assert store_directory(":memory:") is None
    assert store_directory("memory:") is None
    assert store_directory("postgresql://u@h:5432/d") is None


async def test_open_store_opens_each_backend(tmp_path: Path) -> None:
    memory = await open_store("memory:")
    assert isinstance(memory, MemoryStore)
    await memory.close()
    sqlite = await open_store(f"sqlite://{tmp_path}/sub/cp.db")
    try:
        assert isinstance(sqlite, SqliteStore) and (tmp_path / "sub" / "cp.db").is_file()
    finally:
        await sqlite.close()
    with pytest.raises(ValueError, match="unknown store"):
        await open_store("redis://localhost/0")
    assert not (tmp_path / "redis:").exists()


async def test_a_sqlite_file_serves_one_store_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    first = await SqliteStore.open(path)
    try:
        with pytest.raises(StoreInUse) as refused:
            await SqliteStore.open(path)
        message = str(refused.value)
        assert f"{path}.lock is locked" in message and "pid " in message
        assert "Stop that control plane first" in message
        assert len(await first.cluster_id()) == 32  # the first one works on
    finally:
        await first.close()
    again = await SqliteStore.open(path)  # closing released the lock
    await again.close()


def test_a_second_control_plane_on_one_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    first = start_process(db, secure=False)
    try:
        second = subprocess.run(
            [
                str(BIN / "muster-controlplane"),
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(db),
                "--data-listen",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=isolated_env(tmp_path),
        )
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"muster-controlplane: error: database {db} is in use by another control plane "
            f"(pid {first.proc.pid}): {db}.lock is locked. Stop that control plane first, "
            "or give this one its own --db"
        ]
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_the_command_line_refuses_an_unknown_scheme_before_making_anything(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [str(BIN / "muster-controlplane"), "--insecure", "--db", "postgresq://u@h/d"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=isolated_env(tmp_path),
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown store 'postgresq:'" in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_migrate_brings_sqlite_up_to_date_once(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    assert await migrate_store(path) == (0, len(MIGRATIONS))
    assert await migrate_store(f"sqlite://{path}") == (len(MIGRATIONS), len(MIGRATIONS))
    assert await migrate_store("memory:") == (0, 0)


def test_migrate_subcommand(tmp_path: Path) -> None:
    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "muster-controlplane"), "migrate", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=isolated_env(tmp_path),
        )

    db = tmp_path / "cp.db"
    done = migrate("--db", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"store schema migrated from version 0 to {len(MIGRATIONS)}"
    assert migrate("--db", str(db)).stdout.strip() == (
        f"store schema is up to date (version {len(MIGRATIONS)})"
    )
    refused = migrate("--db", "mysql://x/y")
    assert refused.returncode == 2 and "unknown store 'mysql:'" in refused.stderr
    unreachable = migrate("--db", "postgresql://muster:secret@127.0.0.1:1/muster")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(
        "muster-controlplane: error: cannot connect to PostgreSQL at "
        "postgresql://muster:***@127.0.0.1:1/muster: "
    )
    assert "secret" not in unreachable.stderr and len(unreachable.stderr.splitlines()) == 1


# -- PostgreSQL ---------------------------------------------------------------


async def test_postgres_migrates_once_and_refuses_a_newer_schema(postgres_url: str) -> None:
    import psycopg

    from controlplane.store import postgres

    assert await migrate_store(postgres_url) == (0, len(postgres.MIGRATIONS))
    store = await open_store(postgres_url)  # opening migrates too: nothing left to do
    cluster = await store.cluster_id()
    await store.close()
    assert await migrate_store(postgres_url) == (len(postgres.MIGRATIONS),) * 2
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(SchemaTooNew, match="newer than this control plane"):
        await open_store(postgres_url)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE schema_version SET version = version - 1")
    store = await open_store(postgres_url)
    try:
        assert await store.cluster_id() == cluster  # made once, kept
        assert len(cluster) == 32 and int(cluster, 16) >= 0
    finally:
        await store.close()


def test_postgres_migrate_subcommand(postgres_url: str, tmp_path: Path) -> None:
    from controlplane.store import postgres

    result = subprocess.run(
        [str(BIN / "muster-controlplane"), "migrate", "--db", postgres_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=isolated_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"store schema migrated from version 0 to {len(postgres.MIGRATIONS)}"
    )


async def test_postgres_unreachable_is_unavailable_in_one_line() -> None:
    with pytest.raises(StoreUnavailable) as refused:
        await open_store("postgresql://muster@127.0.0.1:1/muster")
    assert "cannot connect to PostgreSQL at postgresql://muster@127.0.0.1:1/muster" in str(
        refused.value
    )
    assert "\n" not in str(refused.value)


async def test_postgres_calls_fail_unavailable_when_the_server_goes(
    pg_server, postgres_url: str
) -> None:
    """A dropped connection is UNAVAILABLE to callers (never UNKNOWN), and the
    pool reconnects for the next call by itself."""
    import psycopg

    store = await open_store(postgres_url)
    try:
        assert await store.list_nodes() == []
        async with await psycopg.AsyncConnection.connect(pg_server.url(), autocommit=True) as c:
            await c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [postgres_url.rsplit("/", 1)[1]],
            )
        # The pool checks a connection before handing it out: the next call works.
        assert await store.list_nodes() == []
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await store.list_nodes()  # closed pool: unavailable, not a crash
