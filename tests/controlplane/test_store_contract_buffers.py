"""The Store contract for buffer records, on every backend (store_contract_support.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from controlplane.core.buffers import Buffer, BufferFilter, new_id
from controlplane.core.errors import AlreadyExists, FailedPrecondition
from controlplane.store.sqlite import SqliteStore, to_micros
from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import T0

store = store_contract_support.store  # the fixture: one parameter per backend


def buf(n: int, minutes: int = 0, **kw) -> Buffer:
    return Buffer(id=new_id(bytes([n]) * 16), created_at=T0 + timedelta(minutes=minutes), **kw)


def bid(n: int) -> str:
    return buf(n).id


async def test_insert_get_and_refuse_a_taken_id(store) -> None:
    b = buf(1, tags={"a": "1", "b": ""}, expires_at=T0 + timedelta(hours=1))
    await store.insert_buffer(b)
    got = await store.get_buffer(b.id)
    assert got == b and got.tags is not b.tags
    assert got.etag == b.etag
    assert await store.get_buffer(bid(2)) is None
    with pytest.raises(AlreadyExists):
        await store.insert_buffer(b)


async def test_list_pages_newest_first_with_tags_and_exclusions(store) -> None:
    for n in range(1, 8):
        tags = {"kind": "odd" if n % 2 else "even", "n": str(n)}
        await store.insert_buffer(buf(n, minutes=n, tags=tags))
    await store.insert_buffer(buf(8, minutes=8, soft_deleted=True, tags={"kind": "odd"}))
    await store.insert_buffer(buf(9, minutes=9, expires_at=T0, tags={"kind": "odd"}))
    now = T0 + timedelta(days=1)

    seen, after = [], None
    while True:
        page, more = await store.list_buffers(
            BufferFilter({"kind": "odd"}), now=now, limit=2, after=after
        )
        seen += [b.tags["n"] for b in page]
        if not more:
            break
        after = (to_micros(page[-1].created_at), page[-1].id)
    assert seen == ["7", "5", "3", "1"]  # not the soft-deleted 8 nor the expired 9

    flt = BufferFilter({"kind": "odd"}, {"n": "5"})
    page, more = await store.list_buffers(flt, now=now, limit=10, after=None)
    assert [b.tags["n"] for b in page] == ["7", "3", "1"] and not more
    assert await store.count_buffers(flt, now=now) == 3
    assert await store.count_buffers(BufferFilter(), now=now) == 7
    assert await store.count_buffers(BufferFilter(soft_deleted=True), now=now) == 1
    assert await store.count_buffers(BufferFilter({"kind": "none"}), now=now) == 0


async def test_same_creation_time_pages_by_id(store) -> None:
    for n in range(1, 6):
        await store.insert_buffer(buf(n))
    everything, _ = await store.list_buffers(BufferFilter(), now=T0, limit=10, after=None)
    ids = [b.id for b in everything]
    assert ids == sorted(ids, reverse=True)
    after = (to_micros(T0), ids[1])
    rest, more = await store.list_buffers(BufferFilter(), now=T0, limit=10, after=after)
    assert [b.id for b in rest] == ids[2:] and not more


async def test_changes_are_all_or_nothing(store) -> None:
    await store.insert_buffer(buf(1, tags={"a": "1"}))
    await store.insert_buffer(buf(2, soft_deleted=True))

    def soften(_: str, b: Buffer | None) -> Buffer:
        assert b is not None
        if b.soft_deleted:
            raise FailedPrecondition("already soft-deleted")
        return replace(b, soft_deleted=True, tags={"b": "2"})

    with pytest.raises(FailedPrecondition):
        await store.change_buffers([bid(1), bid(2)], soften)
    assert (await store.get_buffer(bid(1))).soft_deleted is False  # rolled back

    done = await store.change_buffers([bid(1), bid(3)], lambda i, b: soften(i, b) if b else None)
    assert [b.id for b in done] == [bid(1)]
    stored = await store.get_buffer(bid(1))
    assert stored.soft_deleted and stored.tags == {"b": "2"}


async def test_change_matching_applies_to_what_a_list_selects(store) -> None:
    await store.insert_buffer(buf(1, tags={"x": "1"}))
    await store.insert_buffer(buf(2, tags={"x": "1"}, expires_at=T0))
    await store.insert_buffer(buf(3, tags={"x": "2"}))
    done = await store.change_matching(
        BufferFilter({"x": "1"}),
        now=T0 + timedelta(seconds=1),
        change=lambda _, b: replace(b, expires_at=T0 + timedelta(days=9)),
    )
    assert [b.id for b in done] == [bid(1)]
    assert (await store.get_buffer(bid(1))).expires_at == T0 + timedelta(days=9)
    assert (await store.get_buffer(bid(2))).expires_at == T0


async def test_expired_ids_and_deletion(store) -> None:
    await store.insert_buffer(buf(1, expires_at=T0))
    await store.insert_buffer(buf(2, expires_at=T0 + timedelta(hours=1)))
    await store.insert_buffer(buf(3, expires_at=T0, soft_deleted=True, tags={"k": "v"}))
    await store.insert_buffer(buf(4))
    later = T0 + timedelta(minutes=1)
    assert await store.expired_buffers(later, soft_deleted=False, limit=10) == [bid(1)]
    assert await store.expired_buffers(later, soft_deleted=True, limit=10) == [bid(3)]
    assert await store.expired_buffers(later, soft_deleted=True, limit=0) == []
    assert await store.delete_buffers([bid(3), bid(9)]) == 1
    assert await store.get_buffer(bid(3)) is None
    assert await store.delete_buffers([]) == 0


async def test_buffers_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    first = await SqliteStore.open(path)
    await first.insert_buffer(buf(1, tags={"a": "b"}, expires_at=T0))
    await first.close()
    again = await SqliteStore.open(path)
    try:
        assert await again.get_buffer(bid(1)) == buf(1, tags={"a": "b"}, expires_at=T0)
    finally:
        await again.close()
