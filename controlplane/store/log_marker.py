"""The marker line that stands for a run's dropped oldest log lines (the log
cap of retention); every backend writes it the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MARKER_SEQUENCE = -1
"""The line number of a run's marker line (dropped lines); agents number lines from 0."""
MARKER_ROOM = 200
"""Bytes kept free for the marker line when dropping a run's oldest lines."""


def last_line_to_drop(rows: list[T], excess: int, size: Callable[[T], int]) -> T | None:
    """The last of `rows` (oldest first) to drop so that at least `excess`
    bytes go, or the last row when they are not enough; None for no rows."""
    freed, last = 0, None
    for row in rows:
        freed, last = freed + size(row), row
        if freed >= excess:
            break
    return last
