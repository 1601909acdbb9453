"""One contract, every Store backend (SQLite file, SQLite in memory, dict, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core.codespec import Codespec
from controlplane.core.errors import Conflict
from controlplane.store.factory import open_store
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import MIGRATIONS, SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "memory", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    if request.param == "sqlite-file":
        s = await SqliteStore.open(tmp_path / "sub" / "db.sqlite")
    elif request.param == "sqlite-memory":
        s = await SqliteStore.open(":memory:")
    elif request.param == "postgresql":  # the session's server, a database of its own
        s = await open_store(request.getfixturevalue("postgres_url"))
    else:
        s = MemoryStore()
    yield s
    await s.close()


def spec(name: str, version: int, minutes: int = 0, image: str = "img") -> Codespec:
    return Codespec(
        name=name,
        image=image,
        version=version,
        created_at=T0 + timedelta(minutes=minutes),
        env={"A": "1"},
    )


async def test_insert_and_read_back(store) -> None:
    await store.insert_codespec(spec("a", 1))
    await store.insert_codespec(spec("a", 2, image="img2"))
    latest = await store.latest_codespec("a")
    assert (latest.version, latest.image, latest.env) == (2, "img2", {"A": "1"})
    assert (await store.get_codespec("a", 1)).image == "img"
    assert (await store.get_codespec("a", 1)).created_at == T0
    assert await store.get_codespec("a", 3) is None
    assert await store.latest_codespec("zzz") is None


async def test_versions_cannot_gap_or_repeat(store) -> None:
    await store.insert_codespec(spec("a", 1))
    with pytest.raises(Conflict):
        await store.insert_codespec(spec("a", 1))
    with pytest.raises(Conflict):
        await store.insert_codespec(spec("a", 3))
    assert (await store.latest_codespec("a")).version == 1


@pytest.mark.parametrize("order", ["name", "newest"])
async def test_list_pages_cover_everything_once(store, order: str) -> None:
    for i, name in enumerate(["c", "a", "b", "d", "e"]):
        await store.insert_codespec(spec(name, 1, minutes=i))
    await store.insert_codespec(spec("a", 2, minutes=10))
    await store.insert_codespec(spec("x_1", 1, minutes=11))
    seen, after = [], None
    while True:
        page = await store.list_codespecs(prefix="", order=order, limit=2, after=after)
        seen += [(c.name, c.version) for c in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    if order == "name":
        assert [n for n, _ in seen] == ["a", "b", "c", "d", "e", "x_1"]
    else:  # newest name first (by first version), ties by name
        assert [n for n, _ in seen] == ["x_1", "e", "d", "b", "a", "c"]
    assert ("a", 2) in seen


async def test_prefix_is_literal(store) -> None:
    for name in ["x_1", "xa1", "y"]:
        await store.insert_codespec(spec(name, 1))
    page = await store.list_codespecs(prefix="x_", order="name", limit=10, after=None)
    assert [c.name for c in page.items] == ["x_1"]


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


async def test_registry_logins_are_replaced_listed_and_deleted(store) -> None:
    from controlplane.core.images import StoredLogin

    assert await store.list_registry_logins() == []
    await store.save_registry_login(StoredLogin("quay.io", "bob", b"\x01sealed-1", T0))
    await store.save_registry_login(StoredLogin("localhost:5000", "amy", b"\x01sealed-2", T0))
    later = T0 + timedelta(minutes=1)
    await store.save_registry_login(StoredLogin("quay.io", "bobby", b"\x01sealed-3", later))
    logins = await store.list_registry_logins()
    assert [(s.registry, s.username, s.sealed, s.updated_at) for s in logins] == [
        ("localhost:5000", "amy", b"\x01sealed-2", T0),
        ("quay.io", "bobby", b"\x01sealed-3", later),
    ]
    assert await store.delete_registry_login("quay.io") is True
    assert await store.delete_registry_login("quay.io") is False
    assert [s.registry for s in await store.list_registry_logins()] == ["localhost:5000"]


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


async def test_every_store_has_a_stable_cluster_id(store) -> None:
    first = await store.cluster_id()
    assert len(first) == 32 and first == await store.cluster_id()


async def test_a_request_id_is_stored_with_its_run(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    first = await store.insert_run(make_run(), "req-0123456789abcdef")
    await store.insert_run(make_run())  # no id: nothing remembered
    assert (await store.run_for_request("req-0123456789abcdef", T0)).run_id == first.id
    assert await store.run_for_request("req-0123456789abcdef", T0 + timedelta(seconds=1)) is None
    assert await store.run_for_request("req-unknown-0123456789", T0) is None
    # The same id again (after it expired) now names the newer run.
    later = make_run()
    later.created_at = T0 + timedelta(days=2)
    second = await store.insert_run(later, "req-0123456789abcdef", "f" * 64)
    known = await store.run_for_request("req-0123456789abcdef", T0 + timedelta(days=1))
    assert known is not None and (known.run_id, known.fingerprint) == (second.id, "f" * 64)
    await store.insert_run(make_run(), "req-old-0123456789abc")
    assert await store.forget_requests(T0 + timedelta(days=1), limit=10) == 1
    assert await store.run_for_request("req-old-0123456789abc", T0) is None
    assert (await store.run_for_request("req-0123456789abcdef", T0)).run_id == second.id


async def finished_run(store, minutes: int, tags: dict[str, str] | None = None, request_id=""):
    """A run that finished `minutes` after T0."""
    from controlplane.core import runs as sm
    from tests.controlplane.test_runs_state import make_run

    run = make_run()
    run.tags = dict(tags or {})
    run = await store.insert_run(run, request_id)
    sm.cancel(run, T0 + timedelta(minutes=minutes))
    await store.save_run(run)
    return run


def lines(run_id: int, count: int, text: str = "x" * 100, start: int = 0) -> list:
    from controlplane.core.logs import LogLine

    return [
        LogLine(run_id, "job", 0, "stdout", i, 1_000_000 * (i + 1), text)
        for i in range(start, start + count)
    ]


async def test_retention_deletes_finished_runs_with_their_logs_tags_and_ids(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    old = await finished_run(store, 1, {"team": "a"}, "old-request-0123456789")
    recent = await finished_run(store, 60, {"team": "a"})
    active = await store.insert_run(make_run())
    for run in (old, recent, active):
        await store.append_logs(lines(run.id, 30))
    cutoff = T0 + timedelta(minutes=30)
    assert await store.finished_before(cutoff, 10) == [old.id]
    assert await store.delete_logs(old.id, 20) == 20  # a big run goes in chunks
    assert await store.delete_logs(old.id, 20) == 10
    assert await store.delete_logs(old.id, 20) == 0
    assert await store.delete_runs([old.id]) == 1
    assert await store.get_run(old.id) is None
    assert await store.finished_before(cutoff, 10) == []
    assert await store.count_runs(tags={"team": "a"}, since=None) == {"Canceled": 1}
    assert await store.run_for_request("old-request-0123456789", T0) is None
    assert await store.read_logs(old.id, since_ns=None, max_id=None, after=None, limit=100) == []
    assert (
        len(await store.read_logs(recent.id, since_ns=None, max_id=None, after=None, limit=99))
        == 30
    )
    assert await store.finished_before(T0 + timedelta(days=1), 10) == [recent.id]  # not active
    assert await store.delete_runs([]) == 0
    await store.compact(100)


async def test_a_runs_logs_are_capped_oldest_first_with_one_marker(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    run = await store.insert_run(make_run())
    other = await store.insert_run(make_run())
    await store.append_logs(lines(run.id, 100))  # 100 lines of 100 bytes
    await store.append_logs(lines(other.id, 5))
    assert await store.log_usage(run.id) == (10_000, 0)
    assert await store.runs_over_log_cap(5000, 10) == [run.id]
    marker = "[muster] {dropped} earlier log lines were dropped"
    dropped = await store.drop_oldest_logs(run.id, 5000, 1000, marker)
    assert dropped == 52  # down to the cap, with room for the marker
    assert await store.drop_oldest_logs(run.id, 5000, 1000, marker) == 0
    kept = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=1000)
    assert kept[0].line.text == "[muster] 52 earlier log lines were dropped"
    assert [s.line.sequence for s in kept[1:]] == list(range(52, 100))
    size, total = await store.log_usage(run.id)
    assert size <= 5000 and total == 52
    # More arrives; the marker is replaced and counts everything dropped so far.
    await store.append_logs(lines(run.id, 20, start=100))
    assert await store.drop_oldest_logs(run.id, 5000, 1000, marker) == 21
    kept = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=1000)
    assert [s.line.text for s in kept].count("[muster] 73 earlier log lines were dropped") == 1
    assert kept[0].line.text.startswith("[muster] 73")
    assert [s.line.sequence for s in kept[1:]] == list(range(73, 120))
    tail = await store.tail_logs(run.id, count=1, since_ns=None, max_id=None)
    assert tail[0].line.sequence == 119
    assert await store.runs_over_log_cap(5000, 10) == []
    assert await store.log_usage(other.id) == (500, 0)


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


async def test_a_finished_run_read_again_shows_every_change(store) -> None:
    """Reads of finished runs may be served from a decoded copy: a change to
    the stored run (its tags) must show, in get_run and in list_runs."""
    run = await finished_run(store, 1, {"a": "1"})
    for _ in range(2):  # the second read may come from the copy
        assert (await store.get_run(run.id)).tags == {"a": "1"}
    changed = await store.get_run(run.id)
    from controlplane.core import runs as sm

    draft = sm.clone(changed)
    draft.tags = {"a": "2"}
    await store.save_run(draft)
    assert (await store.get_run(run.id)).tags == {"a": "2"}
    listed, _ = await store.list_runs(
        statuses=frozenset(), tags={}, since=None, limit=10, before_id=None
    )
    assert [r.tags for r in listed] == [{"a": "2"}]
    assert changed.tags == {"a": "1"}, "a run handed out earlier was changed in place"
