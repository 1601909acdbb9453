"""Buffer use cases: records in the store, bytes behind `BufferStorage`.

The record is stored before the data plane is asked for anything (create:
store, then make the container), and a purge takes the record out of sight
before the bytes go, so whatever fails half-way leaves a state the deleter
finishes: a purge cut short is an expired soft-deleted record, which the
deleter's next round purges again. Expiry is counted on the wall clock
(injectable), like every other calendar lifetime in muster.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from controlplane.core import buffers as core
from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.errors import AlreadyExists, InvalidArgument
from controlplane.services import paging
from controlplane.services.codespecs import utcnow
from controlplane.store.base import Store
from controlplane.store.micros import to_micros

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
DELETER_EVERY = timedelta(seconds=30)
DELETER_BATCH = 1000
"""Records the deleter takes on per transaction."""


class BufferStorage(Protocol):
    """The data plane as this service sees it: one container of blobs per buffer."""

    async def create(self, buffer_id: str) -> None: ...  # make the container (idempotent)
    async def delete(self, buffer_id: str) -> None: ...  # remove every blob (idempotent)
    async def mark_failed(self, buffer_id: str) -> None: ...  # failed end marker, create-only
    def access_url(self, buffer_id: str, *, writable: bool, expires_at: datetime) -> str: ...


class DataPlaneUnavailable(Exception):
    """The data plane is missing or failed; the API answers UNAVAILABLE with this message."""


NO_DATA_PLANE = (
    "this control plane has no data plane configured, so buffer contents cannot be "
    "read or written (buffer records work without one)"
)


@dataclass(frozen=True)
class Selection:
    """What a delete, restore or purge applies to: ids, or a filter, or everything."""

    ids: list[str] = field(default_factory=list)
    filter: BufferFilter = field(default_factory=BufferFilter)
    all: bool = False

    def validated(self) -> Selection:
        """Exactly one of ids, tags, all (exclude-tags only narrow tags or all)."""
        given = [bool(self.ids), bool(self.filter.tags), self.all]
        if sum(given) != 1:
            raise InvalidArgument(
                "ids", "give exactly one of: buffer ids, tags to match, or all (for every buffer)"
            )
        if self.ids and self.filter.exclude_tags:
            raise InvalidArgument(
                "filter.exclude_tags", "exclude tags go with tags or all, not ids"
            )
        core.validate_filter(self.filter)
        return Selection(core.validate_ids(self.ids), self.filter, self.all)


@dataclass(frozen=True)
class Access:
    """A time-limited URL to a buffer's container."""

    uri: str
    expires_at: datetime


class BufferService:
    """Buffer records and their lifecycle: create, read, update, soft delete,
    restore, purge, expiry, and access URLs handed out by the data plane."""

    def __init__(
        self,
        store: Store,
        storage: BufferStorage | None,
        clock: Callable[[], datetime] = utcnow,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._store = store
        self.storage = storage
        self._clock = clock
        self._random = random_bytes

    # -- create and read ---------------------------------------------------

    async def create(self, tags: dict[str, str], ttl_seconds: int = 0) -> Buffer:
        """Store the record, then make its container; a container that cannot
        be made takes the record back out, so a retry makes one buffer."""
        core.validate_tags(tags)
        now = self._clock()
        expires_at = core.expiry(now, ttl_seconds)
        while True:
            buffer = Buffer(core.new_id(self._random(16)), now, dict(tags), expires_at)
            try:
                await self._store.insert_buffer(buffer)
                break
            except AlreadyExists:  # 128 random bits: practically never
                continue
        if self.storage is not None:
            try:
                await self.storage.create(buffer.id)
            except Exception as exc:
                await self._store.delete_buffers([buffer.id])
                raise self._storage_failed("create the buffer's storage", buffer.id, exc) from exc
        log.info("event=buffer_created id=%s", buffer.id)
        return buffer

    async def get(self, buffer_id: str, *, soft_deleted: bool = False) -> Buffer:
        """An active (or soft-deleted) buffer that has not expired."""
        core.validate_id(buffer_id)
        buffer = core.found(await self._store.get_buffer(buffer_id), buffer_id, self._clock())
        if buffer.soft_deleted != soft_deleted:
            raise core.not_found(buffer_id)
        return buffer

    async def list(
        self, flt: BufferFilter, *, size: int = 0, token: str = ""
    ) -> tuple[builtins.list[Buffer], str]:
        """One page, newest first, and the next page's token ('' at the end)."""
        core.validate_filter(flt)
        if size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        limit = min(size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        query = _query(flt)
        after = _cursor(paging.decode(token, query))
        items, more = await self._store.list_buffers(
            flt, now=self._clock(), limit=limit, after=after
        )
        if not more or not items:
            return items, ""
        last = items[-1]
        return items, paging.encode(query, [to_micros(last.created_at), last.id])

    async def count(self, flt: BufferFilter) -> int:
        """How many buffers a list with the same filter would give."""
        core.validate_filter(flt)
        return await self._store.count_buffers(flt, now=self._clock())

    # -- change --------------------------------------------------------------

    async def update(
        self,
        buffer_id: str,
        *,
        tags: dict[str, str],
        clear_tags: bool = False,
        ttl_seconds: int | None = None,
        etag: str = "",
    ) -> Buffer:
        """Merge (or replace) tags and reset the expiry of an active buffer, if
        its ETag is still `etag`; checked and written in one transaction."""
        core.validate_id(buffer_id)
        core.validate_tags(tags)
        now = self._clock()
        expires_at = core.expiry(now, ttl_seconds) if ttl_seconds is not None else None

        def change(_: str, current: Buffer | None) -> Buffer:
            return core.updated(
                core.found(current, buffer_id, now),
                tags=tags,
                clear_tags=clear_tags,
                expires_at=expires_at,
                change_expiry=ttl_seconds is not None,
                etag=etag,
            )

        (stored,) = await self._store.change_buffers([buffer_id], change)
        return stored

    async def delete(
        self, selection: Selection, ttl_seconds: int | None = None
    ) -> builtins.list[Buffer]:
        """Soft-delete active buffers; restorable until `ttl_seconds` from now
        (default one day), then purged by the deleter."""
        selection = selection.validated()
        now = self._clock()
        expires_at = core.soft_deleted_expiry(now, ttl_seconds)
        flt = BufferFilter(selection.filter.tags, selection.filter.exclude_tags, False)
        changed = await self._change(
            selection, flt, now, lambda b: core.soft_deleted(b, expires_at)
        )
        log.info("event=buffers_deleted count=%d", len(changed))
        return changed

    async def restore(self, selection: Selection) -> builtins.list[Buffer]:
        """Make soft-deleted buffers active again (they then never expire)."""
        selection = selection.validated()
        now = self._clock()
        flt = BufferFilter(selection.filter.tags, selection.filter.exclude_tags, True)
        changed = await self._change(selection, flt, now, core.restored)
        log.info("event=buffers_restored count=%d", len(changed))
        return changed

    async def purge(self, selection: Selection) -> builtins.list[Buffer]:
        """Delete soft-deleted buffers and their bytes now. The records go out
        of sight first (expired), then the bytes, then the records."""
        selection = selection.validated()
        now = self._clock()
        flt = BufferFilter(selection.filter.tags, selection.filter.exclude_tags, True)
        doomed = await self._change(selection, flt, now, lambda b: core.purging(b, now))
        await self._purge([b.id for b in doomed])
        log.info("event=buffers_purged count=%d", len(doomed))
        return doomed

    async def _change(
        self,
        selection: Selection,
        flt: BufferFilter,
        now: datetime,
        step: Callable[[Buffer], Buffer],
    ) -> builtins.list[Buffer]:
        """Apply `step` to the selected buffers in one transaction: by ids,
        each must exist (else nothing changes); by filter, what matches."""

        def by_id(buffer_id: str, current: Buffer | None) -> Buffer:
            return step(core.found(current, buffer_id, now))

        def matched(_: str, current: Buffer | None) -> Buffer | None:
            return step(current) if current is not None else None

        if selection.ids:
            return await self._store.change_buffers(selection.ids, by_id)
        return await self._store.change_matching(flt, now=now, change=matched)

    async def _purge(self, ids: builtins.list[str]) -> None:
        """Each buffer's bytes, then its record: bytes never outlive their
        record, so nothing is left that no one can see and purge again."""
        for buffer_id in ids:
            await self._delete_bytes(buffer_id)
            await self._store.delete_buffers([buffer_id])

    async def _delete_bytes(self, buffer_id: str) -> None:
        if self.storage is None:
            return  # no data plane: there never were bytes
        try:
            await self.storage.delete(buffer_id)
        except Exception as exc:
            raise self._storage_failed(
                "delete the buffer's contents (the deleter retries)", buffer_id, exc
            ) from exc

    # -- access --------------------------------------------------------------

    async def access(self, buffer_id: str, *, writable: bool, ttl_seconds: int = 0) -> Access:
        """A URL to an active buffer's container, living 30 s to 1 h."""
        ttl = core.access_ttl(ttl_seconds)
        buffer = await self.get(buffer_id)
        if self.storage is None:
            raise DataPlaneUnavailable(NO_DATA_PLANE)
        expires_at = self._clock() + ttl
        try:
            uri = self.storage.access_url(buffer.id, writable=writable, expires_at=expires_at)
        except Exception as exc:
            raise self._storage_failed("make an access URL", buffer.id, exc) from exc
        return Access(uri, expires_at)

    def run_url(self, buffer_id: str, *, writable: bool, expires_at: datetime) -> str:
        """A URL for a run's job container, valid until `expires_at`: beyond
        the one-hour limit of `access`, because the agent that holds it cannot
        ask for a fresh one yet. The run bound the buffer at its creation, so
        the record is not looked up again."""
        if self.storage is None:
            raise DataPlaneUnavailable(NO_DATA_PLANE)
        return self.storage.access_url(buffer_id, writable=writable, expires_at=expires_at)

    @staticmethod
    def _storage_failed(what: str, buffer_id: str, exc: Exception) -> DataPlaneUnavailable:
        log.error("event=data_plane_failed id=%s action=%r error=%r", buffer_id, what, str(exc))
        return DataPlaneUnavailable(
            f"the data plane could not {what} for buffer '{buffer_id}': {exc}; retry"
        )

    # -- the deleter ---------------------------------------------------------

    async def run_deleter(self, every: timedelta = DELETER_EVERY) -> None:
        """Every `every`: expire what is due. Errors are logged; the next round retries."""
        while True:
            await asyncio.sleep(every.total_seconds())
            try:
                await self.sweep()
            except Exception:
                log.exception("event=buffer_deleter_failed")

    async def sweep(self) -> tuple[int, int]:
        """Soft-delete expired active buffers (restorable for the default
        day), purge expired soft-deleted ones; returns how many of each."""
        now = self._clock()
        softened = purged = 0
        expires_at = core.soft_deleted_expiry(now, None)

        def expire(_: str, current: Buffer | None) -> Buffer | None:
            if current is None or current.soft_deleted or not core.expired(current, now):
                return None  # changed since it was listed
            return core.soft_deleted(current, expires_at)

        while ids := await self._store.expired_buffers(
            now, soft_deleted=False, limit=DELETER_BATCH
        ):
            done = await self._store.change_buffers(ids, expire)
            softened += len(done)
            if not done or len(ids) < DELETER_BATCH:
                break
        while ids := await self._store.expired_buffers(now, soft_deleted=True, limit=DELETER_BATCH):
            gone = await self._purge_expired(ids)
            purged += gone
            if not gone or len(ids) < DELETER_BATCH:
                break
        if softened or purged:
            log.info("event=buffers_expired soft_deleted=%d purged=%d", softened, purged)
        return softened, purged

    async def _purge_expired(self, ids: builtins.list[str]) -> int:
        """Purge what can be purged; a buffer whose bytes cannot be deleted
        now is left for the next round without holding up the others."""
        gone = []
        for buffer_id in ids:
            try:
                await self._delete_bytes(buffer_id)
            except DataPlaneUnavailable:
                continue  # logged; retried next round
            gone.append(buffer_id)
        await self._store.delete_buffers(gone)
        return len(gone)


def _query(flt: BufferFilter) -> dict[str, object]:
    """What a page token is bound to."""
    return {
        "tags": dict(sorted(flt.tags.items())),
        "exclude": dict(sorted(flt.exclude_tags.items())),
        "soft": flt.soft_deleted,
    }


def _cursor(cursor: object) -> tuple[int, str] | None:
    if cursor is None:
        return None
    if isinstance(cursor, list) and len(cursor) == 2:
        born, last_id = cursor
        if isinstance(born, int) and isinstance(last_id, str) and abs(born) < 2**63:
            return born, last_id
    raise InvalidArgument("page_token", "the page token is malformed")
