"""Durations and times on the command line.

Durations follow Go's `time.ParseDuration` (what Tyger's `--timeout` takes:
`300s`, `1.5h`, `2h45m`, `1h30m10.5s`, units ns us µs ms s m h), plus muster's
extras: a bare number of seconds (`90`) and days (`1d`, `1d12h`). Times are
RFC 3339; one without a zone is local time, as in Tyger.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import click
from google.protobuf.timestamp_pb2 import Timestamp

_UNIT_SECONDS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),  # U+00B5 micro sign, as Go accepts
    "μs": Decimal("1e-6"),  # U+03BC Greek mu
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),  # muster's extra; Go has no days
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_HINT = "use e.g. 300s, 1.5h, 2h45m, 1d or a number of seconds"


class DurationError(ValueError):
    """Text that is not a duration."""


def duration_seconds(text: str) -> Decimal:
    """Exact seconds of a Go duration (or a bare number of seconds, or days)."""
    body = text.strip()
    sign = Decimal(1)
    if body[:1] in "+-" and body:
        sign = Decimal(-1) if body[0] == "-" else sign
        body = body[1:]
    if re.fullmatch(r"\d+(?:\.\d+)?", body):
        return sign * Decimal(body)
    if body == "0":
        return Decimal(0)
    total, pos = Decimal(0), 0
    for match in _TERM.finditer(body):
        if match.start() != pos:
            break
        total += Decimal(match[1]) * _UNIT_SECONDS[match[2]]
        pos = match.end()
    if not body or pos != len(body):
        raise DurationError(f"'{text}' is not a duration; {_HINT}")
    return sign * total


def parse_duration(text: str, flag: str = "--timeout") -> int:
    """Whole seconds of a duration, truncated as Tyger does (`1.5s` -> 1)."""
    try:
        return int(duration_seconds(text))
    except DurationError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time (local time when it names no zone), or None."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone() if when.tzinfo is None else when


def parse_since(text: str, flag: str = "--since") -> Timestamp:
    """RFC 3339 time (`2026-11-25T10:00:00Z`; local without a zone) or a duration ago (`10m`)."""
    when = parse_time(text)
    if when is None:
        try:
            when = datetime.now(UTC) - timedelta(seconds=float(duration_seconds(text)))
        except DurationError:
            raise click.BadParameter(
                f"'{text}' is neither a time (2026-11-25T10:00:00Z) nor a duration (10m)",
                param_hint=flag,
            ) from None
        except OverflowError:
            raise click.BadParameter(f"'{text}' is too far back", param_hint=flag) from None
    ts = Timestamp()
    try:
        ts.FromDatetime(when.astimezone(UTC))
    except (ValueError, OverflowError):
        raise click.BadParameter(f"'{text}' is out of range", param_hint=flag) from None
    return ts


def optional_duration(text: str | None, flag: str, examples: str) -> int:
    """Seconds of an optional duration flag (0 when not given), with the flag's own hint."""
    if not text:
        return 0
    try:
        seconds = duration_seconds(text)
    except DurationError:
        seconds = Decimal(-1)
    if seconds < 0:
        raise click.BadParameter(
            f"'{text}' is not a duration; use e.g. {examples}", param_hint=flag
        )
    return int(seconds)
