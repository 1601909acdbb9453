"""Byte sources and sinks for the writer and reader, without stalling the loop.

A buffer's bytes come from a regular file, a pipe (stdin, a FIFO the agent
made) or an async iterator, and go to a file, a pipe or an async callback.
Regular files are read and written in a thread executor, whole blocks at a
time. Pipes are read by the event loop itself (non-blocking, through
`connect_read_pipe`): a thread blocked in read() on a quiet pipe would keep
the process from exiting after a failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import io
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, BinaryIO, Protocol

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


class Source(Protocol):
    """Where a writer takes bytes from."""

    regular: bool
    """A regular file: reads fill whole blocks, so periodic flushing is pointless."""

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes (at least one), or b"" at the end."""
        ...

    async def aclose(self) -> None:
        """Release what reading held (the caller still owns the original file)."""
        ...


class Sink(Protocol):
    """Where a reader puts bytes."""

    async def write(self, data: bytes) -> None:
        """Write all of `data`."""
        ...

    async def aclose(self) -> None:
        """Flush; the caller still owns the original file."""
        ...


ByteSource = BinaryIO | int | AsyncIterable[bytes] | bytes
ByteSink = BinaryIO | int | Callable[[bytes], Awaitable[Any]]


def _fd_of(obj: object) -> int | None:
    if isinstance(obj, int):
        return obj
    try:
        return obj.fileno()  # type: ignore[attr-defined]  # none: AttributeError, below
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


async def open_source(obj: ByteSource) -> Source:
    """A Source over a file object, a file descriptor, bytes or an async iterable."""
    if isinstance(obj, bytes | bytearray):
        return _FileSource(io.BytesIO(bytes(obj)))
    if hasattr(obj, "__aiter__"):
        return _IterSource(obj.__aiter__())
    fd = _fd_of(obj)
    if fd is None:
        return _FileSource(obj)  # type: ignore[arg-type]  # what is left: a file object
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return _FileSource(obj if not isinstance(obj, int) else os.fdopen(fd, "rb", closefd=False))
    return await _PipeSource.open(fd)


class _FileSource:
    """A regular file (or anything file-like without a descriptor)."""

    regular = True

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    async def read(self, n: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self._f.read, n)

    async def aclose(self) -> None:
        return None


class _IterSource:
    """An async iterator of chunks; a chunk longer than asked is split."""

    regular = False

    def __init__(self, it: AsyncIterator[bytes]) -> None:
        self._it = it
        self._rest = b""

    async def read(self, n: int) -> bytes:
        while not self._rest:
            try:
                self._rest = bytes(await anext(self._it))
            except StopAsyncIteration:
                return b""
        chunk, self._rest = self._rest[:n], self._rest[n:]
        return chunk

    async def aclose(self) -> None:
        closer = getattr(self._it, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


class _PipeProtocol(asyncio.Protocol):
    """Keeps what the pipe delivers as the bytes objects it came in (no copies),
    pausing the pipe while more than `limit` bytes wait to be read."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a read pipe's transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit and not self._paused and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, n: int) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        if len(chunk) > n:
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._size -= len(chunk)
        if self._paused and self._size <= self._limit // 2 and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        return chunk


class _PipeSource:
    """A pipe, FIFO, socket or terminal, read by the event loop."""

    regular = False

    def __init__(self, fd: int, protocol: _PipeProtocol, transport: asyncio.BaseTransport):
        self._fd, self._protocol, self._transport = fd, protocol, transport

    @classmethod
    async def open(cls, fd: int) -> _PipeSource:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)  # fewer, larger reads
        loop = asyncio.get_running_loop()
        protocol = _PipeProtocol(4 * PIPE_SIZE)
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
        return cls(fd, protocol, transport)

    async def read(self, n: int) -> bytes:
        return await self._protocol.read(n)

    async def aclose(self) -> None:
        self._transport.close()
        with contextlib.suppress(OSError):
            os.set_blocking(self._fd, True)  # the flag is shared with the caller's descriptor


def open_sink(obj: ByteSink) -> Sink:
    """A Sink over a file object, a file descriptor or an async callback."""
    if isinstance(obj, int):
        return _FileSink(os.fdopen(obj, "wb", closefd=False))
    if callable(obj) and not hasattr(obj, "write"):
        return _CallbackSink(obj)
    return _FileSink(obj)  # type: ignore[arg-type]  # what is left: a file object


class _FileSink:
    """Blocking writes, one block per executor call (a file, a pipe, stdout)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write_all, data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._f.write(view)
            view = view[written if written is not None else len(view) :]

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._f.flush)


class _CallbackSink:
    def __init__(self, callback: Callable[[bytes], Awaitable[Any]]) -> None:
        self._callback = callback

    async def write(self, data: bytes) -> None:
        await self._callback(data)

    async def aclose(self) -> None:
        return None
