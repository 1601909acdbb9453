"""Joining with several control planes on one PostgreSQL database (docs/ha.md,
issue 8): only the leader knows which nodes exist, so only the leader admits a
Join; a follower refuses it like any write, naming the leader, and the agent
follows that hint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.credentials import CredentialStore, ensure_credentials
from controlplane.security.tls import SecurityConfig
from controlplane.server import start
from muster.common.leaders import LEADER_API_KEY, hint_in
from muster.common.pki import parse_node_cert
from tests.security.conftest import SETTINGS, Secure, connect

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair(postgres_url: str, tmp_path: Path) -> AsyncIterator[tuple[Secure, Secure]]:
    """A leader and a follower, sharing the database and the state directory
    (the CA), as docs/ha.md asks."""
    state = tmp_path / "state"
    planes = []
    try:
        for _ in range(2):
            planes.append(
                await start(
                    "127.0.0.1:0",
                    postgres_url,
                    SETTINGS,
                    SecurityConfig(state_dir=state, agent_listen="127.0.0.1:0"),
                )
            )
        admin = json.loads((state / "admin.json").read_text())
        leader, follower = (
            Secure(p, state, admin["caCert"].encode(), admin["token"]) for p in planes
        )
        assert leader.plane.leadership is not None and leader.plane.leadership.leading
        assert follower.plane.leadership is not None and not follower.plane.leadership.leading
        yield leader, follower
    finally:
        for plane in reversed(planes):
            await plane.stop(grace=0.2)


async def test_a_follower_refuses_join_naming_the_leader_and_spends_nothing(
    pair: tuple[Secure, Secure],
) -> None:
    leader, follower = pair
    known = await leader.join("node-a", await leader.join_token("cpu"))
    async with leader.node_channel(known) as channel:
        agent = await connect(channel, "node-a", ["cpu"])
        await agent.next("registered")  # the leader knows node-a now
        token = await leader.join_token("cpu")
        # The follower never loaded the nodes: it must not sign a second
        # certificate for node-a, which the leader refuses (ALREADY_EXISTS).
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await follower.join("node-a", token)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not the leader" in (refused.value.details() or "")
        assert hint_in(refused.value, LEADER_API_KEY) == leader.api
        with pytest.raises(grpc.aio.AioRpcError) as exists:
            await leader.join("node-a", token)
        assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # Neither refusal spent the token.
        fresh = await leader.join("node-b", token)
        assert parse_node_cert(fresh.cert).node == "node-b"


async def test_the_agent_joins_through_a_follower_by_following_its_hint(
    pair: tuple[Secure, Secure], tmp_path: Path
) -> None:
    leader, follower = pair
    store = CredentialStore(tmp_path / "agent")
    joining = ensure_credentials(
        store,
        "node-c",
        follower.api,  # the follower first, as in --server follower,leader
        leader.ca,
        await leader.join_token("gpu"),
        None,
        asyncio.Event(),
        lambda attempt: 0.05,
    )
    creds = await asyncio.wait_for(joining, 20)  # retrying at the follower forever fails here
    assert creds is not None
    assert (creds.info.node, creds.info.pools) == ("node-c", ("gpu",))
    # It learned the agent address from the leader, which signed.
    assert creds.agent_server == leader.agents
    assert store.load() == creds
    async with grpc.aio.secure_channel(creds.agent_server, creds.channel_credentials()) as channel:
        agent = await connect(channel, "node-c", ["gpu"])
        await agent.next("registered")
