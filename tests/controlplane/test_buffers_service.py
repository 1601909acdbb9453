"""BufferService use cases on the in-memory and SQLite stores, with a fake
wall clock and a fake data plane that records what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core.buffers import BufferFilter
from controlplane.core.errors import FailedPrecondition, InvalidArgument, NotFound
from controlplane.services.buffers import (
    BufferService,
    BufferStorage,
    DataPlaneUnavailable,
    Selection,
)
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


class FakeStorage:
    """Records containers; can be told to fail."""

    def __init__(self) -> None:
        self.containers: set[str] = set()
        self.deleted: list[str] = []
        self.failing: set[str] = set()
        self.fail_create = False
        self.attempts = 0
        self.called = asyncio.Event()

    async def create(self, buffer_id: str) -> None:
        if self.fail_create:
            raise OSError("disk on fire")
        self.containers.add(buffer_id)

    async def delete(self, buffer_id: str) -> None:
        self.attempts += 1
        self.called.set()
        if buffer_id in self.failing:
            raise OSError("cannot delete")
        self.containers.discard(buffer_id)
        self.deleted.append(buffer_id)

    async def mark_failed(self, buffer_id: str) -> None:
        pass

    def access_url(self, buffer_id: str, *, writable: bool, expires_at: datetime) -> str:
        mode = "rc" if writable else "r"
        return f"http://dp/{buffer_id}?sp={mode}&se={expires_at.isoformat()}"


def _conforms(storage: FakeStorage) -> BufferStorage:
    return storage  # type-checks that the fake follows the protocol


@pytest.fixture(params=["memory", "sqlite"])
async def parts(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[BufferService, FakeStorage, Clock]]:
    store = MemoryStore() if request.param == "memory" else await SqliteStore.open(":memory:")
    storage, clock = FakeStorage(), Clock()
    yield BufferService(store, _conforms(storage), clock), storage, clock
    await store.close()


async def test_create_stores_then_makes_the_container(parts) -> None:
    service, storage, _ = parts
    b = await service.create({"project": "x"}, ttl_seconds=60)
    assert len(b.id) == 26 and b.id in storage.containers
    assert b.expires_at == T0 + timedelta(seconds=60) and b.created_at == T0
    assert (await service.get(b.id)) == b
    forever = await service.create({})
    assert forever.expires_at is None and forever.id != b.id


async def test_a_container_that_cannot_be_made_leaves_no_record(parts) -> None:
    service, storage, _ = parts
    storage.fail_create = True
    with pytest.raises(DataPlaneUnavailable, match="disk on fire"):
        await service.create({"a": "b"})
    assert await service.count(BufferFilter()) == 0


async def test_bad_ids_tags_and_ttls_are_invalid_arguments(parts) -> None:
    service, _, _ = parts
    for bad in ("", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "a" * 25, "1" * 26, "x" * 10_000):
        with pytest.raises(InvalidArgument, match="not a buffer id"):
            await service.get(bad)
    with pytest.raises(InvalidArgument, match="tag keys"):
        await service.create({"bad key": "v"})
    with pytest.raises(InvalidArgument, match="tag values"):
        await service.create({"k": "v" * 257})
    with pytest.raises(InvalidArgument, match="at most 100 tags"):
        await service.create({f"k{i}": "v" for i in range(101)})
    with pytest.raises(InvalidArgument, match="negative"):
        await service.create({}, ttl_seconds=-1)
    with pytest.raises(InvalidArgument, match="at most"):
        await service.create({}, ttl_seconds=2**62)
    b = await service.create({})
    for ttl in (1, 29, 3601, -5):
        with pytest.raises(InvalidArgument, match="30-3600"):
            await service.access(b.id, writable=False, ttl_seconds=ttl)
    with pytest.raises(InvalidArgument, match="page token"):
        await service.list(BufferFilter(), token="garbage!")


async def test_unknown_ids_are_not_found_with_tygers_message(parts) -> None:
    service, _, _ = parts
    missing = "a" * 26
    with pytest.raises(NotFound, match=f"the buffer '{missing}' was not found"):
        await service.get(missing)
    with pytest.raises(NotFound):
        await service.update(missing, tags={"a": "b"})
    with pytest.raises(NotFound):
        await service.delete(Selection(ids=[missing]))
    with pytest.raises(NotFound):
        await service.access(missing, writable=True)


async def test_list_filters_and_pages_newest_first(parts) -> None:
    service, _, clock = parts
    made = []
    for i in range(7):
        made.append(await service.create({"set": "a" if i % 2 else "b", "i": str(i)}))
        clock.advance(seconds=1)
    seen, token = [], ""
    while True:
        page, token = await service.list(BufferFilter({"set": "b"}), size=2, token=token)
        seen += [b.tags["i"] for b in page]
        if not token:
            break
    assert seen == ["6", "4", "2", "0"]
    page, token = await service.list(BufferFilter(exclude_tags={"set": "b", "i": "5"}))
    assert [b.tags["i"] for b in page] == ["3", "1"] and token == ""
    assert await service.count(BufferFilter({"set": "a"})) == 3
    _, first = await service.list(BufferFilter({"set": "b"}), size=1)
    with pytest.raises(InvalidArgument, match="other filters"):
        await service.list(BufferFilter({"set": "a"}), size=1, token=first)


async def test_update_merges_tags_and_honours_the_etag(parts) -> None:
    service, _, clock = parts
    b = await service.create({"a": "1", "b": "2"})
    stale = b.etag
    clock.advance(seconds=5)
    b2 = await service.update(b.id, tags={"b": "3", "c": "4"}, etag=stale)
    assert b2.tags == {"a": "1", "b": "3", "c": "4"} and b2.etag != stale
    with pytest.raises(FailedPrecondition, match="has changed"):
        await service.update(b.id, tags={"z": "9"}, clear_tags=True, etag=stale)
    assert (await service.get(b.id)).tags == b2.tags  # nothing changed
    b3 = await service.update(b.id, tags={"only": "me"}, clear_tags=True, ttl_seconds=10)
    assert b3.tags == {"only": "me"} and b3.expires_at == clock.now + timedelta(seconds=10)
    b4 = await service.update(b.id, tags={}, ttl_seconds=0)
    assert b4.expires_at is None and b4.tags == {"only": "me"}
    with pytest.raises(InvalidArgument, match="at most 100"):
        await service.update(b.id, tags={f"k{i}": "v" for i in range(100)})


async def test_delete_hides_restore_brings_back(parts) -> None:
    service, _, clock = parts
    b = await service.create({"team": "red"})
    other = await service.create({"team": "blue"})
    (deleted,) = await service.delete(Selection(ids=[b.id]), ttl_seconds=3600)
    assert deleted.soft_deleted and deleted.expires_at == clock.now + timedelta(hours=1)
    with pytest.raises(NotFound):
        await service.get(b.id)
    assert (await service.get(b.id, soft_deleted=True)).id == b.id
    assert await service.count(BufferFilter()) == 1
    with pytest.raises(FailedPrecondition, match="already soft-deleted"):
        await service.delete(Selection(ids=[b.id]))
    with pytest.raises(FailedPrecondition, match="not soft-deleted"):
        await service.restore(Selection(ids=[other.id]))
    (restored,) = await service.restore(Selection(ids=[b.id]))
    assert not restored.soft_deleted and restored.expires_at is None
    assert (await service.get(b.id)).tags == {"team": "red"}


async def test_bulk_delete_restore_by_tags_and_all(parts) -> None:
    service, _, _ = parts
    for team in ("red", "red", "blue"):
        await service.create({"team": team})
    assert len(await service.delete(Selection(filter=BufferFilter({"team": "red"})))) == 2
    assert await service.count(BufferFilter()) == 1
    assert len(await service.delete(Selection(all=True))) == 1
    assert await service.count(BufferFilter(soft_deleted=True)) == 3
    restored = await service.restore(Selection(all=True, filter=BufferFilter({}, {"team": "red"})))
    assert [b.tags for b in restored] == [{"team": "blue"}]
    with pytest.raises(InvalidArgument, match="exactly one"):
        await service.delete(Selection())
    with pytest.raises(InvalidArgument, match="exactly one"):
        await service.delete(Selection(ids=["a" * 26], all=True))


async def test_purge_deletes_bytes_then_the_record(parts) -> None:
    service, storage, _ = parts
    b = await service.create({})
    with pytest.raises(FailedPrecondition, match="delete it before purging"):
        await service.purge(Selection(ids=[b.id]))
    await service.delete(Selection(ids=[b.id]))
    (purged,) = await service.purge(Selection(ids=[b.id]))
    assert purged.id == b.id and storage.deleted == [b.id]
    assert b.id not in storage.containers
    with pytest.raises(NotFound):
        await service.get(b.id, soft_deleted=True)
    assert await service.count(BufferFilter(soft_deleted=True)) == 0


async def test_a_purge_cut_short_is_finished_by_the_deleter(parts) -> None:
    service, storage, _ = parts
    b = await service.create({})
    await service.delete(Selection(ids=[b.id]))
    storage.failing.add(b.id)
    with pytest.raises(DataPlaneUnavailable, match="deleter retries"):
        await service.purge(Selection(ids=[b.id]))
    with pytest.raises(NotFound):  # out of sight: nobody restores it meanwhile
        await service.restore(Selection(ids=[b.id]))
    assert await service.sweep() == (0, 0)  # still failing: left for later
    storage.failing.clear()
    assert await service.sweep() == (0, 1)
    assert storage.deleted == [b.id]


async def test_the_deleter_expires_then_purges(parts) -> None:
    service, storage, clock = parts
    short = await service.create({"n": "1"}, ttl_seconds=60)
    keep = await service.create({"n": "2"})
    gone = await service.create({"n": "3"})
    await service.delete(Selection(ids=[gone.id]), ttl_seconds=10)
    clock.advance(seconds=61)
    # Out of sight the moment it expires, before the deleter runs.
    with pytest.raises(NotFound):
        await service.get(short.id)
    assert await service.count(BufferFilter()) == 1
    assert await service.sweep() == (1, 1)
    assert storage.deleted == [gone.id]
    softened = await service.get(short.id, soft_deleted=True)
    assert softened.expires_at == clock.now + timedelta(days=1)
    assert (await service.get(keep.id)).id == keep.id
    clock.advance(days=1, seconds=1)
    assert await service.sweep() == (0, 1)
    assert storage.deleted == [gone.id, short.id]
    assert await service.sweep() == (0, 0)


async def test_the_deleter_loop_runs_and_survives_errors(parts) -> None:
    service, storage, _ = parts
    b = await service.create({})
    await service.delete(Selection(ids=[b.id]), ttl_seconds=0)
    storage.failing.add(b.id)
    task = asyncio.create_task(service.run_deleter(timedelta(milliseconds=10)))
    try:
        async with asyncio.timeout(5):
            await until(storage, lambda: storage.attempts >= 2)  # failed twice, still going
            storage.failing.clear()
            await until(storage, lambda: storage.deleted == [b.id])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await service.count(BufferFilter(soft_deleted=True)) == 0


async def until(storage: FakeStorage, done: Callable[[], bool]) -> None:
    """Wait for `done()`, looking again whenever the storage is called."""
    while not done():
        storage.called.clear()
        await storage.called.wait()


async def test_access_urls_need_a_data_plane(parts) -> None:
    service, _, clock = parts
    b = await service.create({})
    access = await service.access(b.id, writable=True, ttl_seconds=30)
    assert access.expires_at == clock.now + timedelta(seconds=30)
    assert b.id in access.uri and "sp=rc" in access.uri
    assert (await service.access(b.id, writable=False)).expires_at == clock.now + timedelta(hours=1)
    service.storage = None
    with pytest.raises(DataPlaneUnavailable, match="no data plane"):
        await service.access(b.id, writable=False)
    # Records work without one; a purge then has no bytes to delete.
    await service.delete(Selection(ids=[b.id]))
    assert len(await service.purge(Selection(all=True))) == 1
