"""Tyger's TimeSpan text (`job.bufferTtl`, `bufferAccessTtl`, `--buffer-ttl`,
`muster buffer --ttl`), read the same way by the CLI and the control plane.

Tyger's server reads these with .NET's TimeSpan parser, so the forms are
.NET's: `D` (days), `[D.]HH:MM`, `[D.]HH:MM:SS` and `[D.]HH:MM:SS.fffffff`,
hours below 24 and minutes and seconds below 60. muster's CLI also took
`D.HH` (days and hours) before the control plane read these fields, so that
form stays. Fractions of a second are dropped: lifetimes are whole seconds.
"""

from __future__ import annotations

import re

_DAYS_HOURS = re.compile(r"(\d+)(?:\.(\d\d))?")
_CLOCK = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.\d{1,7})?)?")
FORMS = "D.HH:MM:SS (1 is a day, 0.01:30 is 90 minutes, 02:00 is two hours)"


class TimeSpanError(ValueError):
    """Text that is not a Tyger TimeSpan; the message says which forms are."""


def is_timespan(text: str) -> bool:
    """Whether `text` has the shape of a TimeSpan (whatever its ranges)."""
    body = text.strip()
    return bool(_DAYS_HOURS.fullmatch(body) or _CLOCK.fullmatch(body))


def timespan_seconds(text: str) -> int:
    """Whole seconds of a TimeSpan; TimeSpanError if it is not one or a
    part is out of range (hours 0-23, minutes and seconds 0-59)."""
    body = text.strip()
    if match := _DAYS_HOURS.fullmatch(body):
        days, hours, minutes, seconds = int(match[1]), int(match[2] or 0), 0, 0
    elif match := _CLOCK.fullmatch(body):
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    else:
        raise TimeSpanError(f"'{text}' is not a time span; use {FORMS}")
    if hours > 23 or minutes > 59 or seconds > 59:
        raise TimeSpanError(f"'{text}' is out of range: hours 0-23, minutes and seconds 0-59")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_timespan(seconds: int) -> str:
    """Seconds as Tyger writes a TimeSpan: D.HH:MM:SS."""
    days, rest = divmod(max(0, seconds), 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}.{hours:02d}:{minutes:02d}:{secs:02d}"
