"""Tyger-compatible buffers (format 0.3.0): the format, an HTTP client for a
buffer's container, and the writer and reader that the CLI and the agent share.

    async with ContainerClient(url) as client:
        await write_buffer(client, sys.stdin.buffer)
        await read_buffer(client, sys.stdout.buffer)
"""

from muster.common.buffers.client import ContainerClient, parse_access_url
from muster.common.buffers.errors import (
    BufferDataError,
    BufferFailedError,
    BufferNotFoundError,
    BufferOverwriteError,
    HashChainMismatchError,
    InvalidAccessUrlError,
    PermissionMismatchError,
)
from muster.common.buffers.reader import read_buffer
from muster.common.buffers.writer import WriteResult, write_buffer

__all__ = [
    "BufferDataError",
    "BufferFailedError",
    "BufferNotFoundError",
    "BufferOverwriteError",
    "ContainerClient",
    "HashChainMismatchError",
    "InvalidAccessUrlError",
    "PermissionMismatchError",
    "WriteResult",
    "parse_access_url",
    "read_buffer",
    "write_buffer",
]
