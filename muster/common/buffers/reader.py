"""Read a buffer (format 0.3.0) into a sink, in order, while it may still be written.

Up to `dop` downloads run ahead of the consumer, which writes blocks in
order after checking each one's place in the hash chain; at most about `dop`
blocks are held. A block that does not exist yet is waited for (100 ms
growing to 5 s) as long as `.bufferend` has not appeared; a poller looks
for it every `end_poll_interval` seconds. After `complete`, a missing block
is an error unless it lies past the empty final blob; `failed` stops the
read with BufferFailedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from muster.common.buffers import errors
from muster.common.buffers.client import Blob, ContainerClient
from muster.common.buffers.format import (
    DEFAULT_READ_DOP,
    END_BLOB,
    FORMAT_VERSION,
    INITIAL_HASH_CHAIN,
    START_BLOB,
    STATUS_COMPLETE,
    STATUS_FAILED,
    blob_path,
    next_hash_chain,
    parse_end_marker,
    parse_start_marker,
)
from muster.common.buffers.streams import ByteSink, Sink, open_sink

_T = TypeVar("_T")

log = logging.getLogger(__name__)
END_POLL_INTERVAL = 5.0


def tail_pause(attempt: int) -> float:
    """How long to wait before asking again for a block not written yet."""
    if attempt < 10:
        return 0.1
    if attempt < 100:
        return 0.5
    if attempt < 1000:
        return 1.0
    return 5.0


@dataclass
class _State:
    """What the poller and the workers share."""

    end_status: str | None = None
    final: int | None = None
    next_number: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def past_end(self, number: int) -> bool:
        return self.final is not None and number > self.final

    async def pause(self, attempt: int) -> None:
        """Sleep before a retry, waking early when `.bufferend` appears."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), tail_pause(attempt))


async def read_buffer(
    client: ContainerClient,
    sink: ByteSink,
    *,
    dop: int = DEFAULT_READ_DOP,
    end_poll_interval: float = END_POLL_INTERVAL,
) -> int:
    """Copy the buffer behind `client` into `sink`; returns the bytes written."""
    if dop < 1:
        raise ValueError("dop must be at least 1")
    state = _State()
    out = open_sink(sink)
    loop = asyncio.get_running_loop()
    abort: asyncio.Future[None] = loop.create_future()
    queue: asyncio.Queue[tuple[int, asyncio.Future[Blob | None]]] = asyncio.Queue(maxsize=dop)
    tasks = [asyncio.create_task(_poll_end(client, state, abort, end_poll_interval))]
    try:
        await _first(_wait_start(client, state), abort)
        claim = asyncio.Lock()
        tasks += [asyncio.create_task(_worker(client, state, queue, claim)) for _ in range(dop)]
        total = await _consume(queue, abort, out)
        await out.aclose()
        return total
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _forget(queue, abort)


async def _first(awaitable: Awaitable[_T], abort: asyncio.Future[None]) -> _T:
    """Await `awaitable`, unless `abort` fails first (then raise its error)."""
    owned = not isinstance(awaitable, asyncio.Future)
    task = asyncio.ensure_future(awaitable)
    try:
        waiting: set[asyncio.Future[Any]] = {task, abort}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if owned and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled():
        return task.result()
    abort.result()
    raise AssertionError("unreachable")


def _forget(queue: asyncio.Queue, abort: asyncio.Future[None]) -> None:
    """Mark errors nobody will look at as seen (no 'never retrieved' noise)."""
    for fut in [abort, *(f for _, f in list(queue._queue))]:  # type: ignore[attr-defined]  # asyncio.Queue keeps its items private
        if fut.done() and not fut.cancelled():
            fut.exception()
        else:
            fut.cancel()


async def _poll_end(
    client: ContainerClient, state: _State, abort: asyncio.Future[None], interval: float
) -> None:
    """Watch for `.bufferend`; a failed marker (or an error) aborts the read."""
    try:
        while True:
            try:
                blob = await client.get_blob(END_BLOB)
            except errors.BlobNotFoundError:
                await asyncio.sleep(interval)
                continue
            status = parse_end_marker(blob.data)
            if status == STATUS_FAILED:
                raise errors.BufferFailedError()
            if status != STATUS_COMPLETE:
                log.warning("buffer end marker has an unexpected status %r", status)
            state.end_status = STATUS_COMPLETE
            state.ended.set()
            return
    except Exception as exc:
        if not abort.done():
            abort.set_exception(exc)


async def _wait_start(client: ContainerClient, state: _State) -> None:
    """Wait for `.bufferstart` and check the format version it declares."""
    attempt = 0
    while True:
        try:
            blob = await client.get_blob(START_BLOB)
            break
        except errors.BlobNotFoundError:
            await asyncio.sleep(tail_pause(attempt))
            attempt += 1
    version = parse_start_marker(blob.data)
    if version != FORMAT_VERSION:
        raise errors.UnsupportedFormatError(
            f"unsupported buffer format version '{version}' (expected '{FORMAT_VERSION}')"
        )


async def _worker(
    client: ContainerClient,
    state: _State,
    queue: asyncio.Queue[tuple[int, asyncio.Future[Blob | None]]],
    claim: asyncio.Lock,
) -> None:
    """Claim the next block number, queue its future in order, download it."""
    loop = asyncio.get_running_loop()
    while True:
        async with claim:
            number = state.next_number
            state.next_number += 1
            fut: asyncio.Future[Blob | None] = loop.create_future()
            await queue.put((number, fut))
        try:
            blob = await _fetch(client, state, number)
        except Exception as exc:
            fut.set_exception(exc)
            return
        fut.set_result(blob)
        if blob is None or not blob.data:
            return


async def _fetch(client: ContainerClient, state: _State, number: int) -> Blob | None:
    """Block `number`, waiting while the buffer is open; None past the final blob."""
    attempt = 0
    while True:
        if state.past_end(number):
            return None
        ended = state.end_status is not None  # before the request, as it may end meanwhile
        try:
            blob = await client.get_blob(blob_path(number))
        except errors.BlobNotFoundError:
            if state.past_end(number):
                return None
            if ended:
                raise errors.BufferDataError(
                    f"blob number {number} was expected to exist but does not"
                ) from None
            await state.pause(attempt)
            attempt += 1
            continue
        if not blob.data and (state.final is None or number < state.final):
            state.final = number
        return blob


async def _consume(
    queue: asyncio.Queue[tuple[int, asyncio.Future[Blob | None]]],
    abort: asyncio.Future[None],
    out: Sink,
) -> int:
    """Check each block's chain value in order and write it; stop at the empty blob."""
    chain, total = INITIAL_HASH_CHAIN, 0
    while True:
        number, fut = await _first(queue.get(), abort)
        blob = await _first(fut, abort)
        if not isinstance(blob, Blob):
            raise errors.BufferDataError(f"blob number {number} is past the end of the buffer")
        if not blob.data:
            return total
        if not blob.chain:
            raise errors.BufferDataError(
                f"blob number {number}: the cumulative hash chain header is missing"
            )
        chain = next_hash_chain(chain, blob.md5)
        if blob.chain != chain:
            raise errors.HashChainMismatchError()
        await out.write(blob.data)
        total += len(blob.data)
