"""Writer and reader through the real HTTP data plane on loopback."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import os
import threading
from collections.abc import AsyncIterator

import pytest

from controlplane.dataplane import sas
from muster.common.buffers import errors
from muster.common.buffers.client import Blob, ContainerClient
from muster.common.buffers.format import START_BLOB, blob_path, md5_b64, new_buffer_id
from muster.common.buffers.reader import read_buffer
from muster.common.buffers.writer import write_buffer
from tests.buffers.conftest import KEY, in_an_hour

MiB = 1024 * 1024
DEADLINE = 30.0


def pattern(size: int) -> bytes:
    """Deterministic bytes that differ from block to block (so reordering shows)."""
    seed = hashlib.sha256(str(size).encode()).digest()
    unit = (seed * (MiB // len(seed) + 1))[: MiB + 7]
    return (unit * (size // len(unit) + 1))[:size]


async def read_all(client: ContainerClient, **kwargs) -> bytes:
    out = io.BytesIO()
    n = await asyncio.wait_for(read_buffer(client, out, end_poll_interval=0.05, **kwargs), DEADLINE)
    assert n == len(out.getvalue())
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 50 * MiB])
async def test_round_trip(writer_client, reader_client, size: int) -> None:
    data = pattern(size)
    result = await asyncio.wait_for(write_buffer(writer_client, data), DEADLINE)
    assert result.bytes == size
    assert result.blocks == -(-size // (4 * MiB))
    assert await read_all(reader_client) == data


async def test_round_trip_files(writer_client, reader_client, tmp_path) -> None:
    """A regular file in, a regular file out, small blocks and low parallelism."""
    data = pattern(3 * MiB + 11)
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(data)
    with source.open("rb") as f:
        result = await write_buffer(writer_client, f, block_size=256 * 1024, dop=3)
    assert result.blocks == 13
    with target.open("wb") as f:
        await asyncio.wait_for(read_buffer(reader_client, f, dop=2), DEADLINE)
    assert target.read_bytes() == data


async def test_write_from_a_pipe(writer_client, reader_client) -> None:
    """A pipe is read by the event loop; its bytes arrive whole and in order."""
    data = pattern(9 * MiB + 3)
    rfd, wfd = os.pipe()

    def produce() -> None:
        with os.fdopen(wfd, "wb") as w:
            for i in range(0, len(data), 100_000):
                w.write(data[i : i + 100_000])

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        with os.fdopen(rfd, "rb") as r:
            await asyncio.wait_for(write_buffer(writer_client, r, flush_interval=0.5), DEADLINE)
    finally:
        thread.join(DEADLINE)
    assert await read_all(reader_client) == data


class WatchedClient(ContainerClient):
    """Tells the test when the reader has asked for `.bufferstart` and found nothing."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.waiting = asyncio.Event()

    async def get_blob(self, blob: str) -> Blob:
        try:
            return await super().get_blob(blob)
        except errors.BlobNotFoundError:
            if blob == START_BLOB:
                self.waiting.set()
            raise


async def test_reader_started_before_the_writer_tails_a_trickle(
    plane, buffer_id, writer_client
) -> None:
    """The reader waits for the buffer to start, then receives each small piece
    while the writer is still running (flushed by the interval, not by size)."""
    reader = WatchedClient(plane.access_url(buffer_id, writable=False, expires_at=in_an_hour()))
    received = bytearray()
    grew = asyncio.Condition()

    async def sink(chunk: bytes) -> None:
        async with grew:
            received.extend(chunk)
            grew.notify_all()

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(5):
            piece = f"piece {i};".encode()
            yield piece
            target = len(received) + len(piece)

            def arrived(target: int = target) -> bool:
                return len(received) >= target

            async with grew:  # the next piece only once the reader has this one
                await asyncio.wait_for(grew.wait_for(arrived), DEADLINE)

    try:
        reading = asyncio.create_task(read_buffer(reader, sink, end_poll_interval=0.05))
        await asyncio.wait_for(reader.waiting.wait(), DEADLINE)
        assert not reading.done()
        writing = write_buffer(writer_client, trickle(), flush_interval=0.05)
        await asyncio.wait_for(writing, DEADLINE)
        assert await asyncio.wait_for(reading, DEADLINE) == len(received)
    finally:
        await reader.close()
    assert bytes(received) == b"".join(f"piece {i};".encode() for i in range(5))


async def test_corrupted_block_is_detected(writer_client, reader_client, buffer_id, tmp_path):
    await write_buffer(writer_client, pattern(3 * 1000), block_size=1000)
    block = tmp_path / "dataplane" / "data" / buffer_id / blob_path(1)
    raw = bytearray(block.read_bytes())
    raw[10] ^= 0xFF
    os.chmod(block, 0o600)
    block.write_bytes(bytes(raw))
    with pytest.raises(errors.Md5MismatchError):
        await read_all(reader_client)


async def test_broken_hash_chain_is_detected(writer_client, reader_client, buffer_id, tmp_path):
    """Blocks 1 and 2 swapped, each with a valid MD5: only the chain can tell."""
    await write_buffer(writer_client, pattern(4 * 1000), block_size=1000)
    root = tmp_path / "dataplane"
    for top in ("data", "metadata"):
        one = root / top / buffer_id / blob_path(1)
        two = root / top / buffer_id / blob_path(2)
        a, b = one.read_bytes(), two.read_bytes()
        one.write_bytes(b)
        two.write_bytes(a)
    with pytest.raises(errors.HashChainMismatchError, match="hash chain mismatch"):
        await read_all(reader_client)


async def test_missing_chain_value_is_detected(writer_client, reader_client, buffer_id, tmp_path):
    await write_buffer(writer_client, b"abcdef", block_size=2)
    meta = tmp_path / "dataplane" / "metadata" / buffer_id / blob_path(1)
    doc = json.loads(meta.read_text())
    doc["customMetadata"]["cumulative_hash_chain"] = md5_b64(b"not the chain")
    meta.write_text(json.dumps(doc))
    with pytest.raises(errors.HashChainMismatchError):
        await read_all(reader_client)


async def test_missing_block_after_complete(writer_client, reader_client, buffer_id, tmp_path):
    await write_buffer(writer_client, b"abcdef", block_size=2)
    (tmp_path / "dataplane" / "data" / buffer_id / blob_path(1)).unlink()
    with pytest.raises(errors.BufferDataError, match="blob number 1 was expected to exist"):
        await read_all(reader_client)


async def test_overwrite_is_refused(writer_client, reader_client) -> None:
    await write_buffer(writer_client, b"first")
    with pytest.raises(errors.BufferOverwriteError, match="buffer cannot be overwritten"):
        await write_buffer(writer_client, b"second")
    assert await read_all(reader_client) == b"first"


async def test_retried_put_of_the_same_blob_is_accepted(writer_client) -> None:
    """UnauthorizedBlobOverwrite on a retry: the same MD5 and chain mean it went through."""
    await writer_client.put_blob("00/000", b"abc", md5_b64(b"abc"), "chain")
    await writer_client.put_blob("00/000", b"abc", md5_b64(b"abc"), "chain")
    with pytest.raises(errors.BufferOverwriteError):
        await writer_client.put_blob("00/000", b"abc", md5_b64(b"abc"), "another chain")


async def test_failed_writer_leaves_a_failed_marker(
    writer_client, reader_client, tmp_path, buffer_id
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"some data"
        raise OSError("the producer died")

    with pytest.raises(OSError, match="the producer died"):
        await write_buffer(writer_client, broken(), flush_interval=0.01)
    end = tmp_path / "dataplane" / "data" / buffer_id / ".bufferend"
    assert end.read_bytes() == b'{"status":"failed"}'
    with pytest.raises(errors.BufferFailedError, match="permanently failed"):
        await read_all(reader_client)


async def test_cancelled_writer_marks_failed(writer_client, reader_client) -> None:
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"x"
        started.set()
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    writing = asyncio.create_task(write_buffer(writer_client, endless(), flush_interval=0.01))
    await asyncio.wait_for(started.wait(), DEADLINE)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    with pytest.raises(errors.BufferFailedError):
        await read_all(reader_client)


async def test_waiting_reader_sees_a_marker_from_the_control_plane(plane, buffer_id, reader_client):
    """A reader of a buffer nobody writes stops once the buffer is marked failed."""
    reading = asyncio.create_task(read_all(reader_client))
    await plane.mark_failed(buffer_id)
    with pytest.raises(errors.BufferFailedError):
        await reading


async def test_expired_url_is_refused(plane, buffer_id) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    query = sas.sign_query(KEY, buffer_id, "cr", past, starts_at=past - datetime.timedelta(hours=1))
    async with ContainerClient(f"{plane.base_url}/containers/{buffer_id}?{query}") as client:
        with pytest.raises(errors.InvalidAccessUrlError, match="expired"):
            await write_buffer(client, b"data")


async def test_expired_url_is_refreshed(plane, buffer_id) -> None:
    """With a way to get a new URL (the CLI asks the control plane), a 403
    AuthenticationFailed is answered by retrying with a fresh URL."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    query = sas.sign_query(KEY, buffer_id, "cr", past, starts_at=past - datetime.timedelta(hours=1))
    refreshed = 0

    async def refresh() -> str:
        nonlocal refreshed
        refreshed += 1
        return plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())

    stale = f"{plane.base_url}/containers/{buffer_id}?{query}"
    async with ContainerClient(stale, refresh=refresh) as client:
        await write_buffer(client, b"data")
        assert await read_all(client) == b"data"
    assert refreshed == 1


async def test_read_only_url_cannot_write_a_buffer(reader_client) -> None:
    with pytest.raises(errors.PermissionMismatchError):
        await write_buffer(reader_client, b"data")


async def test_unknown_buffer(plane) -> None:
    url = plane.access_url(new_buffer_id(), writable=True, expires_at=in_an_hour())
    async with ContainerClient(url) as client:
        with pytest.raises(errors.BufferNotFoundError):
            await write_buffer(client, b"data")
        with pytest.raises(errors.BufferNotFoundError):
            await read_all(client)
