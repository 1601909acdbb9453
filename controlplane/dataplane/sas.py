"""Signed access URLs in the shape of Tyger's local SAS.

The query is `sv=0.1.0&sp=<permissions>&st=<start>&se=<expiry>&sig=<signature>`,
times as `yyyy-MM-ddTHH:mm:ssZ` (UTC). The signature covers
`sv \\n container \\n sp \\n st \\n se`, so a URL works for one container,
with the permissions it names, between its two times. Tyger signs with an
asymmetric key; muster's control plane and data plane share one process and
one secret, so HMAC-SHA256 does the job with a key kept in a 0600 file.

Permissions: on blobs `r` (read) and `c` (create); on the container itself
`R`, `C` and `D` (the control plane's own container operations).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode

SAS_VERSION = "0.1.0"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
KEY_BYTES = 32


class Resource(enum.Enum):
    CONTAINER = "container"
    BLOB = "blob"


class Action(enum.Flag):
    READ = enum.auto()
    CREATE = enum.auto()
    DELETE = enum.auto()


class Verdict(enum.Enum):
    INVALID = "invalid"  # 403 AuthenticationFailed
    ALLOWED = "allowed"
    NOT_ALLOWED = "not allowed"  # 403 AuthorizationPermissionMismatch


_LETTERS = {
    Resource.CONTAINER: {Action.READ: "R", Action.CREATE: "C", Action.DELETE: "D"},
    Resource.BLOB: {Action.READ: "r", Action.CREATE: "c"},
}


def permissions(resource: Resource, action: Action) -> str:
    """The `sp` letters for `action` on `resource` (create before read, as Tyger orders)."""
    letters = _LETTERS[resource]
    order = [Action.CREATE, Action.READ, Action.DELETE]
    out = "".join(letters[a] for a in order if a in action and a in letters)
    if not out or any(a in action and a not in letters for a in order):
        raise ValueError(f"{action} is not an action on a {resource.value}")
    return out


def format_time(when: datetime.datetime) -> str:
    """`when` in the SAS time format (UTC, whole seconds)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime(TIME_FORMAT)


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _signature(key: bytes, sv: str, container: str, sp: str, st: str, se: str) -> bytes:
    text = "\n".join((sv, container, sp, st, se))
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_query(
    key: bytes,
    container: str,
    sp: str,
    expires_at: datetime.datetime,
    starts_at: datetime.datetime | None = None,
) -> str:
    """The URL query that grants `sp` on `container` until `expires_at`."""
    st = format_time(starts_at or datetime.datetime.now(datetime.UTC))
    se = format_time(expires_at)
    sig = base64.b64encode(_signature(key, SAS_VERSION, container, sp, st, se)).decode()
    return urlencode({"sv": SAS_VERSION, "sp": sp, "st": st, "se": se, "sig": sig})


def verify(
    key: bytes,
    container: str,
    resource: Resource,
    action: Action,
    query: Mapping[str, str],
    now: datetime.datetime | None = None,
) -> tuple[Verdict, str]:
    """Whether `query` grants `action` on `resource` of `container` now, and why not."""
    sv, sp, st, se, sig = (query.get(k) for k in ("sv", "sp", "st", "se", "sig"))
    if sv != SAS_VERSION or not sp or not st or not se or not sig:
        return Verdict.INVALID, "the access URL is missing or has malformed SAS fields"
    start, end = _parse_time(st), _parse_time(se)
    if start is None or end is None:
        return Verdict.INVALID, "the access URL's times are malformed"
    now = now or datetime.datetime.now(datetime.UTC)
    if now < start:
        return Verdict.INVALID, "the access URL is not valid yet"
    if now > end:
        return Verdict.INVALID, "the access URL has expired"
    try:
        given = base64.b64decode(sig, validate=True)
    except ValueError:
        return Verdict.INVALID, "the signature is not base64"
    expected = _signature(key, sv, container, sp, st, se)
    if not hmac.compare_digest(given, expected):
        return Verdict.INVALID, "the signature does not match"
    letters = _LETTERS[resource]
    if any(a in action and letters.get(a, "\0") not in sp for a in Action):
        return Verdict.NOT_ALLOWED, "the access URL does not grant this action"
    return Verdict.ALLOWED, ""


def load_or_create_key(path: Path | str) -> bytes:
    """The signing key kept at `path` (mode 0600), made on first use.

    Created with O_EXCL and renamed into place, so two processes starting at
    once agree on one key and no reader ever sees a partial file."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)  # fails if another process won the race
        except FileExistsError:
            pass
    finally:
        os.unlink(temp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path}: the data-plane signing key is too short")
    return key
