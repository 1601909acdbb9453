"""Buffer records: ids, tags, ETags, filters and lifetimes. No I/O.

A buffer is a named, tagged stream of bytes kept by the data plane; the
control plane keeps only its record. Records follow Tyger's model so that
Tyger's clients and habits carry over: ids are 26 lowercase base32
characters, tags have Tyger's limits, the ETag covers id, soft-deleted flag,
expiry and tags (not the creation time), and a record whose expiry has
passed is out of sight at once, before the deleter moves it on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from controlplane.core.errors import FailedPrecondition, InvalidArgument, NotFound

ID_LENGTH = 26
_ID = re.compile(r"[a-z2-7]{26}")
MAX_TAGS = 100
_TAG_KEY = re.compile(r"[A-Za-z0-9._-]{1,128}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9._-]{0,256}")
LOCATION = "local"
"""The data plane's name for its storage; one location for now."""

ACCESS_TTL_MIN = timedelta(seconds=30)
ACCESS_TTL_MAX = timedelta(hours=1)
ACCESS_TTL_DEFAULT = ACCESS_TTL_MAX
SOFT_DELETED_TTL_DEFAULT = timedelta(days=1)
"""How long a soft-deleted buffer stays restorable unless the delete says otherwise."""
MAX_LIFETIME = timedelta(days=36500)
"""Longer lifetimes are refused: far beyond any use, and they would overflow datetimes."""
MAX_IDS = 1000
"""Ids per delete or restore request."""
SHOWN_CHARS = 40
"""Caller-supplied text is cut to this length in error messages."""


@dataclass(frozen=True)
class Buffer:
    """One buffer's record. `tags` is never shared: the stores copy it."""

    id: str
    created_at: datetime
    tags: dict[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None
    soft_deleted: bool = False
    location: str = LOCATION

    @property
    def etag(self) -> str:
        """Changes whenever tags, expiry or the soft-deleted flag change."""
        return etag_of(self)


@dataclass(frozen=True)
class BufferFilter:
    """Which buffers a list, count or bulk change selects."""

    tags: Mapping[str, str] = field(default_factory=dict)
    exclude_tags: Mapping[str, str] = field(default_factory=dict)
    soft_deleted: bool = False


def shown(text: str) -> str:
    """Caller-supplied text, cut short enough for one line of an error."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def new_id(raw: bytes) -> str:
    """Tyger's form: 16 random bytes (a GUID's worth) as lowercase base32, unpadded."""
    if len(raw) != 16:
        raise ValueError("a buffer id is made of 16 random bytes")
    return base64.b32encode(raw).decode().rstrip("=").lower()


def validate_id(buffer_id: str, field_name: str = "id") -> str:
    """Refuse anything that cannot be a buffer id, naming the form."""
    if not _ID.fullmatch(buffer_id):
        what = f"'{shown(buffer_id)}'" if buffer_id else "an empty id"
        raise InvalidArgument(
            field_name,
            f"{what} is not a buffer id: buffer ids are {ID_LENGTH} characters of a-z and 2-7",
        )
    return buffer_id


def validate_ids(ids: Iterable[str], field_name: str = "ids") -> list[str]:
    """Valid, at most MAX_IDS, duplicates dropped (first occurrence kept)."""
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_IDS:
        raise InvalidArgument(field_name, f"at most {MAX_IDS} ids per request, got {len(unique)}")
    for buffer_id in unique:
        validate_id(buffer_id, field_name)
    return unique


def validate_tags(tags: Mapping[str, str], field_name: str = "tags") -> None:
    """Tyger's tag limits: at most 100; keys 1-128 and values 0-256 of A-Z a-z 0-9 . _ -."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(field_name, f"at most {MAX_TAGS} tags are allowed, got {len(tags)}")
    for key, value in tags.items():
        if not _TAG_KEY.fullmatch(key):
            raise InvalidArgument(
                f"{field_name}.{shown(key)}",
                "tag keys are 1-128 characters of A-Z a-z 0-9 . _ -",
            )
        if not _TAG_VALUE.fullmatch(value):
            raise InvalidArgument(
                f"{field_name}.{shown(key)}",
                "tag values are 0-256 characters of A-Z a-z 0-9 . _ -",
            )


def validate_filter(flt: BufferFilter, field_name: str = "filter") -> None:
    """Filter tags obey the tag rules (which also bounds the query's size)."""
    validate_tags(flt.tags, f"{field_name}.tags")
    validate_tags(flt.exclude_tags, f"{field_name}.exclude_tags")


def millis(ts: datetime) -> int:
    """Milliseconds since the epoch (what the ETag covers of an expiry)."""
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def etag_of(buffer: Buffer) -> str:
    """A stable hash of id, soft-deleted flag, expiry (ms) and sorted tags."""
    expires = millis(buffer.expires_at) if buffer.expires_at is not None else None
    body = json.dumps(
        [buffer.id, buffer.soft_deleted, expires, sorted(buffer.tags.items())],
        separators=(",", ":"),
    )
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def expired(buffer: Buffer, now: datetime) -> bool:
    """Whether its expiry has passed; such a record is out of sight."""
    return buffer.expires_at is not None and buffer.expires_at <= now


def matches(buffer: Buffer, flt: BufferFilter, now: datetime) -> bool:
    """Whether a list or count with `flt` at `now` includes `buffer`."""
    return (
        buffer.soft_deleted == flt.soft_deleted
        and not expired(buffer, now)
        and all(buffer.tags.get(k) == v for k, v in flt.tags.items())
        and not any(buffer.tags.get(k) == v for k, v in flt.exclude_tags.items())
    )


def lifetime(seconds: int, field_name: str) -> timedelta:
    """A lifetime in seconds from a request: not negative, not absurdly long."""
    if seconds < 0:
        raise InvalidArgument(field_name, f"must not be negative (got {seconds})")
    if seconds > MAX_LIFETIME.total_seconds():
        raise InvalidArgument(field_name, f"must be at most {MAX_LIFETIME.days} days")
    return timedelta(seconds=seconds)


def expiry(now: datetime, seconds: int, field_name: str = "ttl_seconds") -> datetime | None:
    """The expiry of an active buffer `seconds` from now; 0 means never."""
    return None if seconds == 0 else now + lifetime(seconds, field_name)


def soft_deleted_expiry(now: datetime, seconds: int | None) -> datetime:
    """When a buffer soft-deleted now is purged: `seconds` from now (0: at
    the deleter's next round), or after the default of one day."""
    ttl = SOFT_DELETED_TTL_DEFAULT if seconds is None else lifetime(seconds, "ttl_seconds")
    return now + ttl


def access_ttl(seconds: int) -> timedelta:
    """An access URL's lifetime: 30 s to 1 h, 0 meaning 1 h (Tyger's limits)."""
    if seconds == 0:
        return ACCESS_TTL_DEFAULT
    low, high = int(ACCESS_TTL_MIN.total_seconds()), int(ACCESS_TTL_MAX.total_seconds())
    if not low <= seconds <= high:
        raise InvalidArgument(
            "ttl_seconds", f"an access URL lives {low}-{high} seconds (got {seconds})"
        )
    return timedelta(seconds=seconds)


# -- changes: pure functions from the current record to the next -------------


def not_found(buffer_id: str) -> NotFound:
    """Tyger's message for an unknown buffer."""
    return NotFound(f"the buffer '{shown(buffer_id)}' was not found")


def found(buffer: Buffer | None, buffer_id: str, now: datetime) -> Buffer:
    """The record if it exists and has not expired; NotFound otherwise."""
    if buffer is None or expired(buffer, now):
        raise not_found(buffer_id)
    return buffer


def updated(
    current: Buffer,
    *,
    tags: Mapping[str, str],
    clear_tags: bool,
    expires_at: datetime | None,
    change_expiry: bool,
    etag: str,
) -> Buffer:
    """An update applied to an active buffer, if its ETag is still `etag`
    (empty: unconditionally). Checked against the record as it is inside the
    same transaction, so a concurrent change makes it fail, not vanish."""
    if current.soft_deleted:
        raise not_found(current.id)
    if etag and etag != current.etag:
        raise FailedPrecondition(
            f"the buffer '{current.id}' has changed: its ETag is {current.etag}, not "
            f"'{shown(etag)}'; read it again and retry"
        )
    new_tags = {} if clear_tags else dict(current.tags)
    new_tags.update(tags)
    validate_tags(new_tags)
    return replace(
        current,
        tags=new_tags,
        expires_at=expires_at if change_expiry else current.expires_at,
    )


def soft_deleted(current: Buffer, expires_at: datetime) -> Buffer:
    """An active buffer soft-deleted, restorable until `expires_at`."""
    if current.soft_deleted:
        raise FailedPrecondition(f"the buffer '{current.id}' is already soft-deleted")
    return replace(current, soft_deleted=True, expires_at=expires_at)


def restored(current: Buffer) -> Buffer:
    """A soft-deleted buffer made active again; like Tyger, it then never expires."""
    if not current.soft_deleted:
        raise FailedPrecondition(f"the buffer '{current.id}' is not soft-deleted")
    return replace(current, soft_deleted=False, expires_at=None)


def purging(current: Buffer, now: datetime) -> Buffer:
    """A soft-deleted buffer marked for purging: expired as of `now`, so it is
    out of sight (nobody restores it meanwhile) and the deleter finishes the
    job if the purge is cut short."""
    if not current.soft_deleted:
        raise FailedPrecondition(
            f"the buffer '{current.id}' is not soft-deleted; delete it before purging it"
        )
    return replace(current, expires_at=now)
