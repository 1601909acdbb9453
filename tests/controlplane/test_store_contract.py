"""One contract, every Store backend (SQLite file, SQLite in memory, dict, PostgreSQL)."""

from __future__ import annotations

import asyncio
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


# -- runs ----------------------------------------------------------------------


def run_at(minutes: int, tags: dict[str, str] | None = None):
    """A new (Pending) run created `minutes` after T0."""
    from tests.controlplane.test_runs_state import make_run

    run = make_run()
    run.created_at = T0 + timedelta(minutes=minutes)
    run.tags = dict(tags or {})
    return run


async def test_runs_round_trip_and_their_ids_only_grow(store) -> None:
    from controlplane.store.documents import run_to_doc

    first = await store.insert_run(run_at(0, {"a": "1"}))
    second = await store.insert_run(run_at(1))
    assert 0 < first.id < second.id
    stored = await store.get_run(first.id)
    assert run_to_doc(stored) == run_to_doc(first)
    assert stored.created_at == T0 and stored.tags == {"a": "1"}
    assert await store.get_run(second.id + 100) is None
    assert await store.delete_runs([second.id]) == 1
    third = await store.insert_run(run_at(2))
    assert third.id > second.id  # never the id of a deleted run
    ghost = run_at(3)
    ghost.id = third.id + 100
    with pytest.raises(KeyError):
        await store.save_run(ghost)
    assert await store.get_run(ghost.id) is None


async def test_save_runs_writes_all_or_nothing(store) -> None:
    """One transaction for several runs: every change lands, or (a run that
    does not exist among them) none does."""
    from controlplane.core import runs as sm
    from controlplane.store.documents import run_to_doc

    made = [await store.insert_run(run_at(i, {"n": str(i)})) for i in range(3)]
    drafts = [sm.clone(run) for run in made]
    sm.cancel(drafts[0], T0 + timedelta(hours=1))
    drafts[1].tags = {"n": "changed"}
    await store.save_runs(drafts[:2])
    first, second, third = [await store.get_run(run.id) for run in made]
    assert first.status == "Canceled" and first.tags == {"n": "0"}
    assert second.tags == {"n": "changed"} and second.status == made[1].status
    assert run_to_doc(third) == run_to_doc(made[2])

    again = [sm.clone(third), run_at(9)]
    again[0].tags = {"n": "lost"}
    again[1].id = made[-1].id + 100
    with pytest.raises(KeyError):
        await store.save_runs(again)
    assert (await store.get_run(third.id)).tags == {"n": "2"}, "half a batch was written"
    await store.save_runs([])


async def test_list_runs_pages_newest_first_and_filters(store) -> None:
    from controlplane.core import runs as sm

    made = []
    for i in range(7):
        tags = {"team": "a" if i % 2 else "b", "n": str(i)}
        made.append(await store.insert_run(run_at(i, tags)))
    for run in made[:3]:  # the three oldest finished
        sm.cancel(run, T0 + timedelta(hours=1))
        await store.save_run(run)
    ids = [r.id for r in made]

    seen, before, more = [], None, True
    while more:
        page, more = await store.list_runs(
            statuses=frozenset(), tags={}, since=None, limit=3, before_id=before
        )
        seen += [r.id for r in page]
        before = page[-1].id if page else None
    assert seen == ids[::-1]

    def listed(**kw):
        filters = {"statuses": frozenset(), "tags": {}, "since": None, **kw}
        return store.list_runs(limit=100, before_id=None, **filters)

    page, more = await listed(statuses=frozenset({"Canceled"}))
    assert [r.id for r in page] == ids[2::-1] and not more
    page, _ = await listed(statuses=frozenset({"Canceled", "Pending"}), tags={"team": "a"})
    assert [r.id for r in page] == [ids[5], ids[3], ids[1]]
    page, _ = await listed(tags={"team": "a", "n": "3"})
    assert [r.id for r in page] == [ids[3]]
    page, _ = await listed(tags={"team": "c"})
    assert page == []
    page, _ = await listed(since=T0 + timedelta(minutes=5))
    assert [r.id for r in page] == [ids[6], ids[5]]
    page, more = await store.list_runs(
        statuses=frozenset(), tags={"team": "b"}, since=None, limit=2, before_id=ids[6]
    )
    assert [r.id for r in page] == [ids[4], ids[2]] and more

    assert await store.count_runs(tags={}, since=None) == {"Canceled": 3, "Pending": 4}
    assert await store.count_runs(tags={"team": "a"}, since=None) == {"Canceled": 1, "Pending": 2}
    since = T0 + timedelta(minutes=2)
    assert await store.count_runs(tags={"team": "b"}, since=since) == {
        "Canceled": 1,
        "Pending": 2,
    }
    assert await store.count_runs(tags={"nobody": "x"}, since=None) == {}


async def test_active_runs_are_the_unfinished_ones_oldest_first(store) -> None:
    from controlplane.core import runs as sm
    from controlplane.store.documents import run_to_doc

    made = [await store.insert_run(run_at(i)) for i in range(4)]
    sm.cancel(made[1], T0 + timedelta(hours=1))
    await store.save_run(made[1])
    sm.place(made[3], {("job", 0): "n1", ("worker", 0): "n1", ("worker", 1): "n2"}, T0)
    await store.save_run(made[3])
    active = await store.active_runs()
    assert [r.id for r in active] == [made[0].id, made[2].id, made[3].id]
    assert run_to_doc(active[2]) == run_to_doc(made[3])  # its placement with it


# -- nodes -----------------------------------------------------------------------


def node(name: str, **kw):
    from controlplane.core.capacity import Capacity
    from controlplane.core.nodes import Node

    return Node(name, ("cpu",), Capacity(4000, 2**33, 0), **kw)


async def test_nodes_are_replaced_listed_by_name_and_removed(store) -> None:
    from controlplane.store.documents import node_to_doc

    await store.save_node(node("n2"))
    await store.save_node(node("n1", labels={"zone": "a"}))
    beat = T0 + timedelta(seconds=5)
    replaced = node(
        "n2",
        labels={"x": "y"},
        gpu_devices=("t.io/gpu=0",),
        registered_at=T0,
        last_heartbeat=beat,
        cordoned=True,
        advertise_address="10.0.0.2",
    )
    await store.save_node(replaced)
    listed = await store.list_nodes()
    assert [n.name for n in listed] == ["n1", "n2"]
    assert node_to_doc(listed[1]) == node_to_doc(replaced)
    assert listed[1].last_heartbeat == beat and listed[0].labels == {"zone": "a"}

    assert await store.node_removed_at("n2") is None
    await store.delete_node("n2", T0)
    await store.delete_node("never-known", T0)
    assert [n.name for n in await store.list_nodes()] == ["n1"]
    assert await store.node_removed_at("n2") == T0
    assert await store.node_removed_at("never-known") == T0
    await store.delete_node("n2", beat)  # removed again: the latest time counts
    assert await store.node_removed_at("n2") == beat
    await store.save_node(node("n2"))  # a node may come back; its removal is remembered
    assert await store.node_removed_at("n2") == beat


# -- logs ------------------------------------------------------------------------


def log_line(run_id: int, role: str, replica: int, seq: int, ts: int, **kw):
    from controlplane.core.logs import LogLine

    text = kw.pop("text", f"{role}{replica}-{seq}")
    return LogLine(run_id, role, replica, kw.pop("stream", "stdout"), seq, ts, text, **kw)


async def test_logs_are_kept_once_in_time_order_with_their_arrival_ids(store) -> None:
    run = await store.insert_run(run_at(0))
    other = await store.insert_run(run_at(0))
    batch = [
        log_line(run.id, "worker", 1, 0, 30),
        log_line(run.id, "job", 0, 0, 10),
        log_line(run.id, "worker", 0, 0, 20),
        log_line(run.id, "job", 0, 1, 10),  # same time as job0-0: arrival breaks the tie
        log_line(run.id, "job", 0, 0, 5, stream="stderr", text="err"),
    ]
    assert await store.last_log_id(run.id) == 0
    assert await store.append_logs(batch) == 5
    assert await store.append_logs([*batch[:2], log_line(other.id, "job", 0, 0, 1)]) == 1
    assert await store.append_logs([log_line(run.id + 999, "job", 0, 0, 1)]) == 0
    assert await store.append_logs([]) == 0

    def read(**kw):
        args = {"since_ns": None, "max_id": None, "after": None, "limit": 100, **kw}
        return store.read_logs(run.id, **args)

    everything = await read()
    assert [s.line.text for s in everything] == [
        "err",
        "job0-0",
        "job0-1",
        "worker0-0",
        "worker1-0",
    ]
    by_arrival = sorted(everything, key=lambda s: s.id)
    assert [s.line.text for s in by_arrival] == [ln.text for ln in batch]
    newest = await store.last_log_id(run.id)
    assert newest == by_arrival[-1].id
    assert await store.last_log_id(other.id) > newest  # ids are global and only grow

    first = await read(limit=2)
    rest = await read(after=(first[-1].line.time_ns, first[-1].id))
    assert first + rest == everything
    assert [s.line.text for s in await read(since_ns=20)] == ["worker0-0", "worker1-0"]
    assert [s.line.text for s in await read(max_id=by_arrival[1].id)] == ["job0-0", "worker1-0"]
    assert everything[0].line == batch[4]  # every field comes back


async def test_tails_and_follows(store) -> None:
    run = await store.insert_run(run_at(0))
    await store.append_logs([log_line(run.id, "job", 0, i, 100 + 10 * i) for i in range(6)])

    def tail(count: int, **kw):
        args = {"since_ns": None, "max_id": None, **kw}
        return store.tail_logs(run.id, count=count, **args)

    def start(count: int, **kw):
        args = {"since_ns": None, "max_id": None, **kw}
        return store.tail_start(run.id, count=count, **args)

    assert [s.line.sequence for s in await tail(2)] == [4, 5]
    assert [s.line.sequence for s in await tail(100)] == list(range(6))
    assert await tail(0) == []
    lines = await tail(100)
    assert await start(2) == (lines[4].line.time_ns, lines[4].id)
    assert await start(100) == (lines[0].line.time_ns, lines[0].id)  # fewer than asked
    assert await start(2, max_id=lines[2].id) == (lines[1].line.time_ns, lines[1].id)
    assert [s.line.sequence for s in await tail(3, since_ns=140)] == [4, 5]
    assert await start(1, since_ns=1000) is None
    empty = await store.insert_run(run_at(0))
    assert await store.tail_start(empty.id, count=5, since_ns=None, max_id=None) is None

    mark = await store.last_log_id(run.id)
    await store.append_logs([log_line(run.id, "job", 0, i, 1) for i in range(6, 9)])
    arrived = await store.new_logs(run.id, after_id=mark, limit=2)
    assert [s.line.sequence for s in arrived] == [6, 7]  # arrival order, not time
    arrived += await store.new_logs(run.id, after_id=arrived[-1].id, limit=10)
    assert [s.line.sequence for s in arrived] == [6, 7, 8]
    assert await store.new_logs(run.id, after_id=arrived[-1].id, limit=10) == []


async def test_any_line_text_comes_back_as_it_went_in(store) -> None:
    """Container output is not always text: NUL, control characters, any
    Unicode and parts of long lines (partial) are stored as they came."""
    run = await store.insert_run(run_at(0))
    texts = ["nul\x00byte", "tab\tbell\x07", "héllo wörld ✓ 🚀", "", "x" * 70_000]
    lines = [log_line(run.id, "job", 0, i, i, text=t) for i, t in enumerate(texts)]
    lines.append(log_line(run.id, "job", 0, 9, 9, text="part one ", partial=True))
    assert await store.append_logs(lines) == len(lines)
    back = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=10)
    assert [s.line for s in back] == lines
    size = sum(len(t.encode()) for t in texts) + len(b"part one ")
    assert await store.log_usage(run.id) == (size, 0)


async def test_a_follower_by_arrival_id_misses_no_line_while_writers_race(store) -> None:
    """Lines of one run written by concurrent callers: a reader that asks for
    what arrived after the last id it saw ends up with every line once."""
    import asyncio

    run = await store.insert_run(run_at(0))
    writers, batches, size = 4, 10, 5
    done = asyncio.Event()

    async def write(writer: int) -> None:
        for b in range(batches):
            start = (writer * batches + b) * size
            await store.append_logs(
                [log_line(run.id, "worker", writer, start + i, start + i) for i in range(size)]
            )

    async def follow() -> list[int]:
        seen: list[int] = []
        after = 0
        while True:
            finished = done.is_set()
            chunk = await store.new_logs(run.id, after_id=after, limit=7)
            seen += [s.line.sequence for s in chunk]
            after = chunk[-1].id if chunk else after
            if finished and not chunk:
                return seen
            await asyncio.sleep(0)

    follower = asyncio.create_task(follow())
    await asyncio.gather(*(write(w) for w in range(writers)))
    done.set()
    seen = await follower
    assert sorted(seen) == list(range(writers * batches * size))


# -- tokens ------------------------------------------------------------------------


def api_token(name: str, hash: str, **kw):
    from controlplane.core.auth import ApiToken, Role

    return ApiToken(name, kw.pop("role", Role.USER), hash, T0, **kw)


async def test_tokens_are_unique_listed_and_revoked_once(store) -> None:
    from controlplane.core.auth import Role
    from controlplane.core.errors import AlreadyExists

    expires = T0 + timedelta(days=1)
    await store.insert_token(api_token("ci", "h1", role=Role.ADMIN, expires_at=expires))
    await store.insert_token(api_token("alice", "h2", role=Role.READER))
    with pytest.raises(AlreadyExists, match="choose another name"):
        await store.insert_token(api_token("ci", "h3"))
    with pytest.raises(AlreadyExists):
        await store.insert_token(api_token("bob", "h1"))  # the same secret twice
    listed = await store.list_tokens()
    assert listed == [
        api_token("alice", "h2", role=Role.READER),
        api_token("ci", "h1", role=Role.ADMIN, expires_at=expires),
    ]
    later = T0 + timedelta(hours=1)
    revoked = await store.revoke_token("ci", later)
    assert revoked is not None and revoked.revoked_at == later
    again = await store.revoke_token("ci", later + timedelta(hours=1))
    assert again is not None and again.revoked_at == later  # the first revocation stays
    assert await store.revoke_token("nobody", later) is None
    assert [t.revoked_at for t in await store.list_tokens()] == [None, later]


async def test_a_join_token_is_spent_once_and_only_before_it_expires(store) -> None:
    from controlplane.core.auth import JoinToken

    expires = T0 + timedelta(hours=1)
    await store.insert_join_token(JoinToken("j1", ("cpu", "gpu"), T0, expires))
    await store.insert_join_token(JoinToken("j2", ("cpu",), T0, expires))
    spent = await store.use_join_token("j1", "n1", T0 + timedelta(minutes=1))
    assert spent == JoinToken("j1", ("cpu", "gpu"), T0, expires, used_by="n1")
    assert await store.use_join_token("j1", "n2", T0 + timedelta(minutes=2)) is None
    assert await store.use_join_token("j2", "n2", expires) is None  # expired at that instant
    assert await store.use_join_token("unknown", "n2", T0) is None
    assert (await store.use_join_token("j2", "n3", expires - timedelta(seconds=1))).used_by == "n3"


# -- retention ---------------------------------------------------------------------


async def test_finished_runs_come_oldest_first_and_capped_runs_largest_first(store) -> None:
    runs = [await finished_run(store, minutes) for minutes in (30, 10, 20)]
    cutoff = T0 + timedelta(hours=1)
    assert await store.finished_before(cutoff, 10) == [runs[1].id, runs[2].id, runs[0].id]
    assert await store.finished_before(cutoff, 2) == [runs[1].id, runs[2].id]
    assert await store.finished_before(T0 + timedelta(minutes=20), 10) == [runs[1].id]
    for run, count in zip(runs, (3, 10, 6), strict=True):
        await store.append_logs(lines(run.id, count))
    assert await store.runs_over_log_cap(250, 10) == [runs[1].id, runs[2].id, runs[0].id]
    assert await store.runs_over_log_cap(250, 1) == [runs[1].id]
    assert await store.runs_over_log_cap(1000, 10) == []
    assert await store.delete_runs([runs[1].id, runs[1].id + 100]) == 1
    assert await store.log_usage(runs[1].id) == (0, 0)
    assert await store.runs_over_log_cap(250, 10) == [runs[2].id, runs[0].id]
    assert await store.compact(10) >= 0


# -- codespecs, concurrently ---------------------------------------------------------


async def test_concurrent_writers_of_one_version_one_wins(store) -> None:
    import asyncio

    await store.insert_codespec(spec("a", 1))
    results = await asyncio.gather(
        *(store.insert_codespec(spec("a", 2, image=f"img{i}")) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))
    assert (await store.latest_codespec("a")).version == 2


async def test_concurrent_joins_spend_a_token_once(store) -> None:
    import asyncio

    from controlplane.core.auth import JoinToken

    await store.insert_join_token(JoinToken("j", ("cpu",), T0, T0 + timedelta(hours=1)))
    results = await asyncio.gather(*(store.use_join_token("j", f"n{i}", T0) for i in range(5)))
    assert len([r for r in results if r is not None]) == 1


# -- leadership (docs/ha.md) ---------------------------------------------------------


async def test_the_lease_is_held_renewed_fenced_and_handed_over(store) -> None:
    from controlplane.core.errors import StoreUnavailable
    from controlplane.store.postgres import PostgresStore

    first = await store.acquire_lease("a", "api-a:1", "agent-a:2", 5.0)
    assert (first.holder, first.api_address, first.agent_address) == ("a", "api-a:1", "agent-a:2")
    assert first.epoch >= 1 and first.seconds_left > 0
    again = await store.acquire_lease("a", "api-a:1", "agent-a:2", 5.0)
    assert (again.holder, again.epoch) == ("a", first.epoch)  # renewed, same epoch
    other = await store.acquire_lease("b", "api-b:1", "agent-b:2", 5.0)
    assert (other.holder, other.epoch, other.api_address) == ("a", first.epoch, "api-a:1")
    await store.set_fence(first.epoch)
    await store.save_node(node("n1"))  # the holder's writes commit
    await store.release_lease("b")  # not b's: nothing changes
    await store.release_lease("a")
    taken = await store.acquire_lease("b", "api-b:1", "agent-b:2", 5.0)
    if not isinstance(store, PostgresStore):
        assert (taken.holder, taken.epoch) == ("a", first.epoch)  # one control plane per store
        return
    assert (taken.holder, taken.epoch, taken.agent_address) == ("b", first.epoch + 1, "agent-b:2")
    with pytest.raises(StoreUnavailable, match="no longer the leader"):
        await store.save_node(node("n2"))  # a's fence: a deposed leader writes nothing
    assert [n.name for n in await store.list_nodes()] == ["n1"]
    await store.set_fence(None)
    await store.save_node(node("n2"))
    back = await store.acquire_lease("a", "api-a:1", "agent-a:2", 5.0)
    assert (back.holder, back.epoch) == ("b", first.epoch + 1)  # b's lease is live


async def test_a_lease_that_expires_is_taken_with_the_next_epoch(postgres_url) -> None:
    store = await open_store(postgres_url)
    try:
        first = await store.acquire_lease("a", "", "", 0.2)
        await asyncio.sleep(0.3)
        taken = await store.acquire_lease("b", "", "", 5.0)
        assert (taken.holder, taken.epoch) == ("b", first.epoch + 1)
    finally:
        await store.close()


async def test_sqlite_epochs_grow_with_every_start(tmp_path: Path) -> None:
    epochs = []
    for holder in ("a", "a", "b"):
        s = await SqliteStore.open(tmp_path / "db.sqlite")
        try:
            epochs.append((await s.acquire_lease(holder, "", "", 5.0)).epoch)
            assert (await s.acquire_lease("x", "", "", 5.0)).holder == holder
        finally:
            await s.close()
    assert epochs == [epochs[0], epochs[0] + 1, epochs[0] + 2]


# -- coverage ------------------------------------------------------------------------


def test_every_store_method_has_a_contract_test() -> None:
    """Each method of the Store protocol is called by this suite (or the buffer
    part of it), so every backend is held to all of it."""
    from controlplane.store.base import Store

    here = Path(__file__)
    source = here.read_text() + (here.parent / "test_buffers_store_contract.py").read_text()
    methods = [name for name in vars(Store) if not name.startswith("_")]
    missing = [m for m in methods if f"store.{m}(" not in source and m != "close"]
    assert len(methods) > 40 and missing == []
