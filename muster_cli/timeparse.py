"""Durations (`90s`, `10m`, `2h`) and times (`2026-11-25T10:00:00Z`) on the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from google.protobuf.timestamp_pb2 import Timestamp

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """Seconds from `90`, `90s`, `10m`, `2h`, `1h30m` or `1d`."""
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise click.BadParameter(
            f"'{text}' is not a duration; use e.g. 300, 90s, 10m, 2h", param_hint="--timeout"
        )
    d, h, m, s = (int(g or 0) for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def parse_since(text: str) -> Timestamp:
    """RFC 3339 time (`2026-11-25T10:00:00Z`) or a duration ago (`90s`, `10m`, `2h`)."""
    ts = Timestamp()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    except ValueError:
        try:
            when = datetime.now(UTC) - timedelta(seconds=parse_duration(text))
        except OverflowError:
            raise click.BadParameter(f"'{text}' is too far back", param_hint="--since") from None
        except click.BadParameter:
            raise click.BadParameter(
                f"'{text}' is neither a time (2026-11-25T10:00:00Z) nor a duration (10m)",
                param_hint="--since",
            ) from None
    ts.FromDatetime(when)
    return ts


def optional_duration(text: str | None, flag: str, examples: str) -> int:
    """Seconds of an optional duration flag (0 when not given), with the flag's own hint."""
    if not text:
        return 0
    try:
        return parse_duration(text)
    except click.BadParameter:
        raise click.BadParameter(
            f"'{text}' is not a duration; use e.g. {examples}", param_hint=flag
        ) from None
