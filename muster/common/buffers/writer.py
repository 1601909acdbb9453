"""Write a byte stream into a buffer in format 0.3.0.

The stream is cut into blocks (`block_size`, or less when input trickles and
`flush_interval` passes, so a reader downstream sees data promptly). Each
block's MD5 and hash-chain value are computed in stream order, then up to
`dop` uploads run at once; at most `dop` blocks (plus the one being read)
are in memory. After the last data block comes the empty final blob, then
`.bufferend` complete. Any failure, including cancellation, leaves
`.bufferend` failed (written within `end_timeout`) so readers stop waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from base64 import b64encode
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from muster.common.buffers import errors
from muster.common.buffers.client import ContainerClient
from muster.common.buffers.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_WRITE_DOP,
    END_BLOB,
    INITIAL_HASH_CHAIN,
    START_BLOB,
    STATUS_COMPLETE,
    STATUS_FAILED,
    blob_path,
    end_marker,
    md5_b64,
    next_hash_chain,
    start_marker,
)
from muster.common.buffers.streams import ByteSource, Source, open_source

log = logging.getLogger(__name__)
END_TIMEOUT = 3.0


@dataclass(frozen=True)
class WriteResult:
    """What was written: data bytes and data blocks (the empty final blob not counted)."""

    bytes: int
    blocks: int


async def write_buffer(
    client: ContainerClient,
    source: ByteSource,
    *,
    dop: int = DEFAULT_WRITE_DOP,
    block_size: int = DEFAULT_BLOCK_SIZE,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    end_timeout: float = END_TIMEOUT,
) -> WriteResult:
    """Write all of `source` to the buffer behind `client`.

    Raises BufferOverwriteError ("buffer cannot be overwritten") when the
    buffer was already started, and whatever stopped the upload otherwise
    (after marking the buffer failed)."""
    if dop < 1 or block_size < 1:
        raise ValueError("dop and block size must be at least 1")
    if await client.head_blob(START_BLOB) is not None:
        raise errors.BufferOverwriteError()
    start = start_marker()
    await client.put_blob(START_BLOB, start, md5_b64(start))
    src = await open_source(source)
    try:
        interval = 0.0 if src.regular else flush_interval
        async with contextlib.aclosing(blocks(src, block_size, interval)) as stream:
            result = await _upload(client, stream, dop)
    except BaseException:
        await _mark_failed(client, end_timeout)
        raise
    finally:
        await src.aclose()
    end = end_marker(STATUS_COMPLETE)
    await client.put_blob(END_BLOB, end, md5_b64(end))
    return result


async def _mark_failed(client: ContainerClient, limit: float) -> None:
    """Best effort: a failed `.bufferend`, so readers report the failure."""
    failed = end_marker(STATUS_FAILED)
    try:
        await asyncio.wait_for(client.put_blob(END_BLOB, failed, md5_b64(failed)), limit)
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("could not mark buffer %s failed: %s", client.container, exc)


async def _upload(client: ContainerClient, stream: AsyncIterator[bytes], dop: int) -> WriteResult:
    """Upload blocks with at most `dop` in flight. MD5s are computed in parallel;
    each block's chain value waits for its predecessor's, so the chain follows
    stream order whatever order the uploads finish in."""
    slots = asyncio.Semaphore(dop)
    previous: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    previous.set_result(INITIAL_HASH_CHAIN)
    number, total = 0, 0
    try:
        async with asyncio.TaskGroup() as group:
            async for block in stream:
                await slots.acquire()
                previous = _start(group, client, number, block, previous, slots)
                number, total = number + 1, total + len(block)
            await slots.acquire()
            _start(group, client, number, b"", previous, slots)
    except BaseExceptionGroup as group_error:
        raise _first_cause(group_error) from None
    return WriteResult(bytes=total, blocks=number)


def _start(
    group: asyncio.TaskGroup,
    client: ContainerClient,
    number: int,
    block: bytes,
    previous: asyncio.Future[str],
    slots: asyncio.Semaphore,
) -> asyncio.Future[str]:
    """Start one block's task; returns the future of its chain value."""
    chain: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    group.create_task(_put(client, number, block, previous, chain, slots))
    return chain


def _first_cause(group_error: BaseExceptionGroup) -> BaseException:
    """The first real error of a task group (cancellations are consequences)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group_error]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    real = [e for e in leaves if not isinstance(e, asyncio.CancelledError)]
    return (real or leaves)[0]


async def _put(
    client: ContainerClient,
    number: int,
    block: bytes,
    previous: asyncio.Future[str],
    chain: asyncio.Future[str],
    slots: asyncio.Semaphore,
) -> None:
    try:
        md5 = await _md5_b64(block)
        chain.set_result(next_hash_chain(await previous, md5))
        await client.put_blob(blob_path(number), block, md5, chain.result())
    finally:
        slots.release()


async def _md5_b64(block: bytes) -> str:
    """MD5 of a block off the event loop (hashlib releases the GIL on large data)."""
    if len(block) < 256 * 1024:
        return md5_b64(block)
    loop = asyncio.get_running_loop()
    digest = await loop.run_in_executor(None, lambda: hashlib.md5(block).digest())
    return b64encode(digest).decode("ascii")


async def blocks(
    src: Source, block_size: int, flush_interval: float
) -> AsyncGenerator[bytes, None]:
    """Cut `src` into blocks of `block_size`; with `flush_interval` > 0, a partial
    block is let go once it has waited that long for more input. Pieces are
    joined once per block (one copy)."""
    pending: asyncio.Task[bytes] | None = None
    parts: list[bytes] = []
    filled = 0
    deadline = 0.0
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(src.read(block_size - filled))
            timeout = None
            if filled and flush_interval > 0:
                timeout = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                yield b"".join(parts)
                parts, filled = [], 0
                continue
            chunk, pending = pending.result(), None
            if not chunk:
                if filled:
                    yield b"".join(parts)
                return
            if not filled:
                deadline = time.monotonic() + flush_interval
            take = block_size - filled
            parts.append(chunk if len(chunk) <= take else chunk[:take])
            filled += min(len(chunk), take)
            if filled == block_size:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                rest = chunk[take:]
                parts, filled = ([rest], len(rest)) if rest else ([], 0)
                deadline = time.monotonic() + flush_interval
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
