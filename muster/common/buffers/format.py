"""Tyger's buffer storage format 0.3.0, as pure functions (no I/O).

A buffer is one blob container. `.bufferstart` opens it, numbered data blobs
follow (their names come from `blob_path`), a zero-length blob ends the data,
and `.bufferend` records whether the writer finished or failed. Every data
blob carries its base64 MD5 (`Content-MD5`) and a cumulative SHA-256 chain
(`x-ms-meta-cumulative_hash_chain`) so that a reader detects a missing,
reordered or substituted block. The constants and encodings here must match
Tyger's byte for byte: buffers move between muster and Tyger unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets

FORMAT_VERSION = "0.3.0"
START_BLOB = ".bufferstart"
END_BLOB = ".bufferend"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

CONTENT_MD5_HEADER = "Content-MD5"
HASH_CHAIN_HEADER = "x-ms-meta-cumulative_hash_chain"
META_PREFIX = "x-ms-meta-"
ERROR_CODE_HEADER = "x-ms-error-code"

INITIAL_HASH_CHAIN = "MDAwMDAwMDAwMDAwMDAwMA=="
"""The chain's seed: base64 of the sixteen ASCII characters "0000000000000000"."""

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
DEFAULT_WRITE_DOP = 16
DEFAULT_READ_DOP = 32
DEFAULT_FLUSH_INTERVAL = 1.0

_BUFFER_ID = re.compile(r"^[a-z2-7]{26}$")


def new_buffer_id() -> str:
    """A fresh id: 16 random bytes in lowercase RFC 4648 base32, unpadded (26 chars)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def is_buffer_id(text: str) -> bool:
    """Whether `text` has the shape of an id that `new_buffer_id` makes."""
    return bool(_BUFFER_ID.match(text))


def blob_path(number: int) -> str:
    """The blob name of data block `number` (Tyger's MakeBlobPath).

    The low 12 bits name the file (3 upper-case hex digits). Of the rest, the
    position of the highest set bit names the root folder, and the remaining
    bits, after that bit is cleared, make nested folders of one byte each
    (2 hex digits, most significant first). Names therefore sort in block
    order and no folder holds more than 4096 files.
    """
    if number < 0:
        raise ValueError("blob numbers are not negative")
    file_number = number & 0xFFF
    rest = number >> 12
    root = rest.bit_length()
    parts = [f"{root:02X}"]
    if root > 1:
        rest &= ~(1 << (root - 1))
        count = (root - 2) // 8 + 1
        parts.extend(f"{(rest >> (8 * i)) & 0xFF:02X}" for i in reversed(range(count)))
    parts.append(f"{file_number:03X}")
    return "/".join(parts)


def start_marker() -> bytes:
    """The content of `.bufferstart`, as Go's json.Marshal writes it."""
    return _go_json({"version": FORMAT_VERSION})


def end_marker(status: str) -> bytes:
    """The content of `.bufferend` for `complete` or `failed`."""
    if status not in (STATUS_COMPLETE, STATUS_FAILED):
        raise ValueError(f"unknown buffer status {status!r}")
    return _go_json({"status": status})


def _go_json(doc: dict[str, str]) -> bytes:
    """Compact JSON without spaces or a trailing newline, like Go's encoder."""
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_start_marker(data: bytes) -> str:
    """The format version a `.bufferstart` declares ('' if it has none)."""
    doc = _json_object(data, START_BLOB)
    return str(doc.get("version", ""))


def parse_end_marker(data: bytes) -> str:
    """The status a `.bufferend` declares ('' if it has none)."""
    doc = _json_object(data, END_BLOB)
    return str(doc.get("status", ""))


def _json_object(data: bytes, name: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{name} is not a JSON object")
    return doc


def md5_b64(data: bytes | bytearray | memoryview) -> str:
    """Base64 of the MD5 digest: the value of Content-MD5."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def next_hash_chain(previous: str, md5_base64: str) -> str:
    """The chain value of a block: base64(sha256(previous chain text + its base64 MD5 text))."""
    digest = hashlib.sha256((previous + md5_base64).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTPE]?)(I?)B?\s*$", re.IGNORECASE)


def parse_block_size(text: str) -> int:
    """Bytes of a --block-size value ("4Mi", "1M", "512KiB", "65536").

    Tyger appends "B" and parses base-2 units, so K, Ki, KB and KiB all mean
    1024; the same holds here.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid block size {text!r} (examples: 4Mi, 1M, 65536)")
    exponent = " KMGTPE".index(match.group(2).upper() or " ")
    size = int(match.group(1)) * 1024**exponent
    if size < 1:
        raise ValueError("the block size must be at least 1 byte")
    return size


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration string ("1s", "500ms", "1m30s", "0")."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r} (examples: 1s, 500ms, 0)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total
