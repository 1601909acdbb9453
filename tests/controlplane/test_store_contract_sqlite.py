"""The SQLite backend's own part of the contract: a file that is reopened,
migrated from an older schema, or refused when a newer muster made it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from controlplane.store.sqlite import MIGRATIONS, SqliteStore
from controlplane.store.sqlite import runs as sqlite_runs
from tests.controlplane.store_contract_support import T0, finished_run, spec


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    s = await SqliteStore.open(path)
    await s.insert_codespec(spec("keep", 1))
    await s.close()
    s = await SqliteStore.open(path)
    try:
        assert (await s.latest_codespec("keep")).created_at == T0
    finally:
        await s.close()


async def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "db.sqlite"
    s = await SqliteStore.open(path)
    await s.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this control plane"):
        await SqliteStore.open(path)


def old_database(path: Path, before: str) -> None:
    """A database as a control plane made it before the migration that
    mentions `before`: only the migrations ahead of that one applied."""
    import sqlite3

    from controlplane.store.sqlite import _split_sql

    version = next(i for i, m in enumerate(MIGRATIONS) if before in m)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for migration in MIGRATIONS[:version]:
        for statement in _split_sql(migration):
            conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    conn.execute(
        "INSERT INTO codespecs (name, version, kind, spec, created_at) VALUES (?, ?, ?, ?, ?)",
        ("keep", 1, "job", '{"image": "img"}', 0),
    )
    conn.close()


async def test_sqlite_migrates_an_older_database_keeping_its_data(tmp_path: Path) -> None:
    """A database made before registry logins existed gains the table on open."""
    from controlplane.core.images import StoredLogin

    path = tmp_path / "db.sqlite"
    old_database(path, "CREATE TABLE registry_logins")
    s = await SqliteStore.open(path)
    try:
        assert (await s.latest_codespec("keep")).version == 1
        await s.save_registry_login(StoredLogin("quay.io", "bob", b"\x01x", T0))
        assert len(await s.list_registry_logins()) == 1
    finally:
        await s.close()


async def test_the_cluster_id_is_made_once_and_kept(tmp_path: Path) -> None:
    """Random per database, the same after every reopen; an older database gets one."""
    path = tmp_path / "db.sqlite"
    s = await SqliteStore.open(path)
    first = await s.cluster_id()
    await s.close()
    s = await SqliteStore.open(path)
    try:
        assert await s.cluster_id() == first
    finally:
        await s.close()
    assert len(first) == 32 and int(first, 16) >= 0
    other = await SqliteStore.open(tmp_path / "other.sqlite")
    try:
        assert await other.cluster_id() != first
    finally:
        await other.close()
    older = tmp_path / "older.sqlite"
    old_database(older, "CREATE TABLE cluster")
    s = await SqliteStore.open(older)
    try:
        assert len(await s.cluster_id()) == 32
        assert (await s.latest_codespec("keep")).version == 1
    finally:
        await s.close()


async def test_an_older_database_gains_retention_columns_from_its_runs(tmp_path: Path) -> None:
    """Finish times and log sizes of runs stored before retention are filled in."""
    import sqlite3

    path = tmp_path / "db.sqlite"
    old_database(path, "CREATE TABLE run_log_usage")
    conn = sqlite3.connect(path, isolation_level=None)
    for status, doc in (
        ("Succeeded", '{"finishedAt": "2026-01-01T00:01:00+00:00"}'),
        ("Running", '{"finishedAt": null}'),
    ):
        conn.execute("INSERT INTO runs (status, created_at, doc) VALUES (?, 0, ?)", (status, doc))
    conn.executemany(
        "INSERT INTO logs (run_id, role, replica, stream, sequence, ts, text) "
        "VALUES (1, 'job', 0, 'stdout', ?, ?, 'héllo')",
        [(i, i) for i in range(3)],
    )
    conn.close()
    s = await SqliteStore.open(path)
    try:
        assert await s.finished_before(T0 + timedelta(minutes=2), 10) == [1]
        assert await s.finished_before(T0 + timedelta(seconds=59), 10) == []
        assert await s.log_usage(1) == (18, 0)  # bytes, not characters
    finally:
        await s.close()


def count_hops(store: SqliteStore) -> list[int]:
    """Counts the store's hops to its thread from now on (in the one item)."""
    hops = [0]
    real_call = store._call

    async def counted(fn, *args):  # type: ignore[no-untyped-def]
        hops[0] += 1
        return await real_call(fn, *args)

    store._call = counted  # type: ignore[method-assign]
    return hops


async def test_point_reads_arriving_together_share_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetRun misses that arrive while one is being read are read together
    (one hop to the store thread, queries of at most READ_CHUNK ids), and
    each caller still gets its own run."""
    monkeypatch.setattr(sqlite_runs, "READ_CHUNK", 3)  # 7 distinct ids: 3 queries
    s = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        runs = [await finished_run(s, minutes=i) for i in range(6)]
        hops = count_hops(s)
        wanted = [r.id for r in runs] + [10_000, runs[0].id]
        got = await asyncio.gather(*(s.get_run(run_id) for run_id in wanted))
        assert [r.id if r else None for r in got] == [*(r.id for r in runs), None, runs[0].id]
        assert hops[0] == 1, "eight reads that arrived together: one hop"
    finally:
        await s.close()


async def test_the_latest_codespec_is_kept_and_never_stale(tmp_path: Path) -> None:
    """One control plane per SQLite file, so every new version passes through
    this store: the latest of a name is read once, then kept; a new version
    (even one inserted while a read was under way) is what the next read gives."""
    s = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        await s.insert_codespec(spec("w", 1))
        hops = count_hops(s)
        assert (await s.latest_codespec("w")).version == 1
        assert (await s.latest_codespec("w")).version == 1
        assert hops[0] == 1, "the second read was answered from memory"
        read, _ = await asyncio.gather(s.latest_codespec("w"), s.insert_codespec(spec("w", 2)))
        assert read.version in (1, 2)
        assert (await s.latest_codespec("w")).version == 2
        assert (await s.latest_codespec("w")).image == "img"
        assert await s.latest_codespec("missing") is None
    finally:
        await s.close()
