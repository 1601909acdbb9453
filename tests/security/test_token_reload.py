"""Reloading tokens (followers every second, a new leader once) never undoes a
revocation or forgets a token that was made while the store was being read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from controlplane.core.auth import Role
from controlplane.core.errors import Unauthenticated
from controlplane.security.ca import ClusterCA
from controlplane.services.auth import AuthService
from controlplane.store.memory import MemoryStore


class SlowReads(MemoryStore):
    """list_tokens answers what the store held when it was called, later."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()

    async def list_tokens(self):  # type: ignore[no-untyped-def]
        snapshot = await super().list_tokens()
        await self.hold.wait()
        return snapshot


async def test_a_reload_keeps_what_changed_while_it_read(tmp_path) -> None:
    store = SlowReads()
    store.hold.set()
    auth = AuthService(store, ClusterCA.load_or_create(tmp_path), clock=lambda: datetime.now(UTC))
    _, old = await auth.create_token("old", Role.READER, None)
    store.hold.clear()
    reload = asyncio.create_task(auth.load())  # reads the store as it is now...
    await asyncio.sleep(0)
    await auth.revoke_token("old")  # ...then these happen before the read lands
    _, new = await auth.create_token("new", Role.USER, None)
    store.hold.set()
    await reload
    with pytest.raises(Unauthenticated, match="was revoked"):
        auth.authenticate(old)
    assert auth.authenticate(new).name == "new"
    await auth.load()  # and a plain reload agrees with the store
    with pytest.raises(Unauthenticated):
        auth.authenticate(old)
