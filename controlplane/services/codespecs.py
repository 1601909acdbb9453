"""Codespec use cases: create a version (or return the identical latest one), read, list."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime

from controlplane.core import codespec as cs
from controlplane.core.codespec import Codespec
from controlplane.core.errors import Conflict, InvalidArgument, NotFound
from controlplane.services import paging
from controlplane.store.base import CodespecOrder, CodespecPage, Store

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class CodespecService:
    """Versioned, immutable codespecs."""

    def __init__(self, store: Store, clock: Clock = utcnow) -> None:
        self._store = store
        self._clock = clock
        self._creating: dict[str, tuple[asyncio.Lock, int]] = {}  # name -> (lock, holders)

    async def create(self, spec: Codespec) -> tuple[Codespec, bool]:
        """Validate and store; returns (stored version, whether it is new).

        Optimistic concurrency: the store refuses a version that is not
        latest+1, so two concurrent identical creates yield one version, and
        concurrent different creates yield consecutive versions without a gap.
        Creates of one name in this process also take turns: retrying on
        conflict alone costs each of N concurrent creates up to N attempts,
        which under a burst is a livelock (every attempt a store round trip);
        the retry stays for writers in other processes.
        """
        cs.validate(spec)
        spec = cs.normalize(spec)
        async with self._turn(spec.name):
            return await self._create(spec)

    @contextlib.asynccontextmanager
    async def _turn(self, name: str) -> AsyncIterator[None]:
        """Hold the lock of `name` (dropped once nobody holds or waits for it)."""
        lock, holders = self._creating.get(name, (asyncio.Lock(), 0))
        self._creating[name] = (lock, holders + 1)
        try:
            async with lock:
                yield
        finally:
            lock, holders = self._creating[name]
            if holders == 1:
                del self._creating[name]
            else:
                self._creating[name] = (lock, holders - 1)

    async def _create(self, spec: Codespec) -> tuple[Codespec, bool]:
        while True:
            latest = await self._store.latest_codespec(spec.name)
            if latest is not None and cs.same_content(latest, spec):
                return latest, False
            candidate = replace(
                spec, version=(latest.version if latest else 0) + 1, created_at=self._clock()
            )
            try:
                return await self._store.insert_codespec(candidate), True
            except Conflict:
                continue

    async def get(self, name: str, version: int | None = None) -> Codespec:
        """Latest or exact version; NotFound names what exists."""
        cs.validate_name(name)
        latest = await self._store.latest_codespec(name)
        if latest is None:
            raise NotFound(f"The codespec '{name}' was not found.")
        if version is None or version == latest.version:
            return latest
        found = await self._store.get_codespec(name, version) if version > 0 else None
        if found is None:
            raise NotFound(
                f"The version '{version}' of codespec '{name}' was not found. "
                f"The latest version is '{latest.version}'."
            )
        return found

    async def resolve(self, reference: str, path: str) -> Codespec:
        """Resolve `name` or `name/versions/N`."""
        name, version = cs.parse_reference(reference, path)
        return await self.get(name, version)

    async def list(
        self, *, prefix: str = "", order: CodespecOrder = "newest", size: int = 0, token: str = ""
    ) -> tuple[list[Codespec], str]:
        """One page of latest versions and the token of the next page ('' at the end)."""
        limit = paging.page_size(size)
        query = {"prefix": prefix, "order": order}
        cursor = paging.decode(token, query)
        after = None
        if cursor is not None:
            born, name = cursor if isinstance(cursor, list) and len(cursor) == 2 else (None, None)
            if not isinstance(born, int) or not isinstance(name, str) or abs(born) >= 2**63:
                raise InvalidArgument("page_token", "the page token is malformed")
            after = (born, name)
        page: CodespecPage = await self._store.list_codespecs(
            prefix=prefix, order=order, limit=limit, after=after
        )
        next_token = paging.encode(query, list(page.next_cursor)) if page.next_cursor else ""
        return page.items, next_token
