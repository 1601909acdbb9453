"""Blobs on local disk, create-only, in the layout of Tyger's local data plane.

    root/data/<container>/<blob path>      the bytes
    root/metadata/<container>/<blob path>  JSON: {"contentMD5": ..., "customMetadata": {...}}
    root/staging/                          bodies and metadata being received

A body is written to staging while its MD5 is computed; only a complete,
verified body is linked into place, metadata first. `os.link` fails when the
name exists, so the first writer of a name wins and a second one is refused:
blobs are never replaced, and a half-received body is never visible. Every
method here blocks; the server calls them in a thread executor.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CONTAINER = re.compile(r"^[a-zA-Z0-9]{3,63}$")
_SEGMENT = re.compile(r"^\.?[a-zA-Z0-9_][a-zA-Z0-9_.\-]{0,254}$")


class ContainerGone(Exception):
    """The container does not exist (or was deleted during the write)."""


def valid_container(name: str) -> bool:
    """Container names as Azure and Tyger allow them (3-63 letters and digits)."""
    return bool(_CONTAINER.match(name))


def valid_blob_path(path: str) -> bool:
    """Relative blob paths of plain segments: no empty, `.` or `..` parts."""
    parts = path.split("/")
    return 0 < len(parts) <= 16 and all(_SEGMENT.match(p) and ".." not in p for p in parts)


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: where its bytes are and what was stored beside them."""

    path: Path
    size: int
    md5: str
    metadata: dict[str, str]


class StagedBlob:
    """A body being received: appended to a staging file while its MD5 grows."""

    def __init__(self, staging: Path) -> None:
        self.path = staging / uuid.uuid4().hex
        self._file: BinaryIO = open(self.path, "xb", buffering=0)
        self._md5 = hashlib.md5()
        self.size = 0

    def append(self, chunks: list[bytes]) -> None:
        """Add pieces of the body, as received (hashlib and writev release the GIL)."""
        for chunk in chunks:
            self._md5.update(chunk)
        views = [memoryview(c) for c in chunks if c]
        while views:
            written = os.writev(self._file.fileno(), views[:1024])
            self.size += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]

    def finish(self) -> str:
        """Close the file; the base64 MD5 of everything appended."""
        self._file.close()
        return b64encode(self._md5.digest()).decode("ascii")

    def discard(self) -> None:
        """Remove the staging file (it was committed by link, or is abandoned)."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class BlobStore:
    """Containers of create-only blobs under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.metadata = self.root / "metadata"
        self.staging = self.root / "staging"
        for folder in (self.data, self.metadata, self.staging):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clear_staging()

    def _clear_staging(self) -> None:
        """Bodies left by a crash were never committed: drop them."""
        for leftover in self.staging.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def exists(self, container: str) -> bool:
        return (self.data / container).is_dir()

    def create(self, container: str) -> None:
        """Make the container (idempotent)."""
        (self.metadata / container).mkdir(exist_ok=True, mode=0o700)
        (self.data / container).mkdir(exist_ok=True, mode=0o700)

    def delete(self, container: str) -> bool:
        """Remove the container and its blobs; False if it did not exist."""
        existed = self.exists(container)
        shutil.rmtree(self.data / container, ignore_errors=True)
        shutil.rmtree(self.metadata / container, ignore_errors=True)
        return existed

    def stage(self) -> StagedBlob:
        """Start receiving a body."""
        return StagedBlob(self.staging)

    def commit(
        self, container: str, blob: str, staged: StagedBlob, md5: str, meta: dict[str, str]
    ) -> bool:
        """Publish a staged body under `blob`; False if that name already exists.

        Raises ContainerGone if the container does not exist."""
        doc: dict[str, object] = {"contentMD5": md5}
        if meta:
            doc["customMetadata"] = meta
        staged_meta = staged.path.with_suffix(".metadata")
        staged_meta.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
        try:
            final_meta = self._place(self.metadata, container, blob)
            try:
                os.link(staged_meta, final_meta)
            except FileExistsError:
                return False
            try:
                os.link(staged.path, self._place(self.data, container, blob))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(final_meta)
                raise
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged_meta)
            staged.discard()

    def _place(self, top: Path, container: str, blob: str) -> Path:
        """The final path of `blob`, its folders made below an existing container
        (never the container itself, so a deleted container stays deleted)."""
        base = top / container
        parts = blob.split("/")
        folder = base
        for part in parts[:-1]:
            folder = folder / part
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise ContainerGone(container) from None
        if not base.is_dir():
            raise ContainerGone(container)
        return folder / parts[-1]

    def info(self, container: str, blob: str) -> BlobInfo | None:
        """The stored blob, or None if there is none under that name."""
        data = self.data / container / blob
        try:
            size = data.stat().st_size
            doc = json.loads((self.metadata / container / blob).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
                return None
            raise
        if not data.is_file():
            return None
        meta = doc.get("customMetadata") or {}
        return BlobInfo(path=data, size=size, md5=str(doc.get("contentMD5", "")), metadata=meta)
