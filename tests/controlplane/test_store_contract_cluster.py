"""The Store contract for the cluster id and leadership (docs/ha.md), on every
backend (store_contract_support.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controlplane.store.factory import open_store
from controlplane.store.sqlite import SqliteStore
from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import node

store = store_contract_support.store  # the fixture: one parameter per backend


async def test_every_store_has_a_stable_cluster_id(store) -> None:
    first = await store.cluster_id()
    assert len(first) == 32 and first == await store.cluster_id()


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
