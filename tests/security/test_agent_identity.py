"""The agent's side of node identity, against a real secure control plane:
join through the agent's own code, stored files, renewal at two thirds."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc

from agent.credentials import CredentialStore, JoinError, NodeCredentials, Renewer, join
from agent.credentials import ensure_credentials as ensure
from muster.common.pki import parse_node_cert
from tests.security.conftest import Secure, connect


async def ensure_credentials(store, node, secure: Secure, token: str):
    return await ensure(
        store, node, secure.api, secure.ca, token, None, asyncio.Event(), lambda _: 0.01
    )


async def test_join_store_reuse_and_renew(secure: Secure, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "node-a")
    creds = await ensure_credentials(store, "node-a", secure, await secure.join_token("cpu"))
    assert creds is not None and creds.agent_server == secure.agents
    assert store.load() == creds
    # Stored: the next start needs no token and gets the same identity.
    assert await ensure_credentials(store, "node-a", secure, "") == creds
    try:
        await ensure_credentials(store, "node-b", secure, "")
        raise AssertionError("another node name must not reuse this identity")
    except JoinError as exc:
        assert "node-a" in str(exc)
    seen: list[NodeCredentials] = []
    renewer = Renewer(store, creds, seen.append)
    fresh = await renewer.renew_now()
    assert seen == [fresh] and store.load() == fresh and fresh.key != creds.key
    old, new = parse_node_cert(creds.cert), parse_node_cert(fresh.cert)
    assert (new.node, new.pools) == ("node-a", ("cpu",)) and new.not_after >= old.not_after
    # The renewed pair opens a stream.
    async with grpc.aio.secure_channel(fresh.agent_server, fresh.channel_credentials()) as ch:
        agent = await connect(ch, "node-a", ["cpu"])
        await agent.next("registered")


async def test_renewer_waits_for_two_thirds_of_the_life(secure: Secure, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "n")
    creds = await join(secure.api, secure.ca, await secure.join_token("cpu"), "n", None)
    info = parse_node_cert(creds.cert)
    life = info.not_after - info.not_before
    calls: list[bytes] = []

    async def renew(c: NodeCredentials, csr: bytes) -> bytes:
        calls.append(csr)
        return c.cert

    now = info.not_before + life * 0.6
    renewer = Renewer(store, creds, lambda _: None, clock=lambda: now, renew=renew)
    task = asyncio.create_task(renewer.run())
    await asyncio.sleep(0.05)
    assert calls == []  # not due yet (the loop sleeps until it is)
    task.cancel()
    now = info.not_before + life * 0.67
    renewer = Renewer(store, creds, lambda _: None, clock=lambda: now, renew=renew)
    task = asyncio.create_task(renewer.run())
    deadline = asyncio.get_running_loop().time() + 5
    while not calls:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    assert info.renew_due(now) == info.not_before + life * 2 / 3
    assert timedelta(days=19) < life * 2 / 3 < timedelta(days=21)
