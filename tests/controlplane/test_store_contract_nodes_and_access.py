"""The Store contract for nodes, API and join tokens and registry logins, on
every backend (store_contract_support.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import T0, node

store = store_contract_support.store  # the fixture: one parameter per backend


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


async def test_concurrent_joins_spend_a_token_once(store) -> None:
    import asyncio

    from controlplane.core.auth import JoinToken

    await store.insert_join_token(JoinToken("j", ("cpu",), T0, T0 + timedelta(hours=1)))
    results = await asyncio.gather(*(store.use_join_token("j", f"n{i}", T0) for i in range(5)))
    assert len([r for r in results if r is not None]) == 1
