"""Times as the SQL backends store them: integer microseconds since the epoch,
UTC, so that cursors and comparisons are exact and identical on every backend."""

from __future__ import annotations

from datetime import UTC, datetime


def to_micros(ts: datetime) -> int:
    """UTC datetime -> integer microseconds (exact, sortable)."""
    delta = ts.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """Inverse of to_micros."""
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def maybe_micros(ts: datetime | None) -> int | None:
    """to_micros, keeping None (a time not set) as NULL."""
    return None if ts is None else to_micros(ts)


def maybe_time(value: int | None) -> datetime | None:
    """from_micros, keeping NULL as None."""
    return None if value is None else from_micros(value)
