"""The embedded data plane: where buffers' bytes live, served over HTTP.

`BufferStorage` is what the BufferService needs from a storage backend;
`DataPlane` (local disk, `server.py`) is the one muster ships. A second
backend (an S3-compatible store) would implement the same four methods; see
docs/buffers-format.md for what it must guarantee.
"""

from __future__ import annotations

import datetime
from typing import Protocol


class BufferStorage(Protocol):
    """Storage operations on buffers, all idempotent."""

    async def create(self, buffer_id: str) -> None:
        """Make the buffer's container."""
        ...

    async def delete(self, buffer_id: str) -> None:
        """Remove the container and every blob in it."""
        ...

    async def mark_failed(self, buffer_id: str) -> None:
        """Write `.bufferend` {"status":"failed"} unless an end marker exists."""
        ...

    def access_url(self, buffer_id: str, *, writable: bool, expires_at: datetime.datetime) -> str:
        """A URL to read (or also create blobs in) the buffer until `expires_at`."""
        ...


__all__ = ["BufferStorage"]
