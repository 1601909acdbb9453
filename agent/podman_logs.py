"""Decoding Podman's log API answer into :class:`~agent.runtime.LogLine` values.

``GET /containers/{id}/logs?timestamps=true`` answers with frames: an 8-byte
header (byte 0 is the stream, 1 stdout or 2 stderr; bytes 4-7 the payload
length, big-endian) and a payload ``"<RFC 3339 time> <text>"``. The text ends
with a newline unless Podman stored it as a *partial* line: a line longer than
conmon's buffer, or output that had no newline (yet) when conmon read it. A
partial is continued by the next frame of the same stream. Pieces are joined
into parts of at most the part limit (:mod:`agent.logparts`), so a line longer
than that is handed over in parts as it arrives and never held whole.

Kept apart from the runtime (no sockets, no threads) so that the byte-level
rules are unit-tested on their own, and so they can run in a reader thread
without touching the event loop.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from datetime import datetime

from agent.logparts import DEFAULT_PART_BYTES, PartAssembler
from agent.runtime import LogLine, LogStreamName

HEADER_SIZE = 8
_STREAMS: dict[int, LogStreamName] = {1: "stdout", 2: "stderr"}
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,9})\d*)?([Zz]|[+-]\d\d:\d\d)$"
)
NS = 1_000_000_000


@functools.lru_cache(maxsize=512)
def _whole_seconds_ns(date: str, clock: str, zone: str) -> int:
    offset = "+00:00" if zone in ("Z", "z") else zone
    moment = datetime.fromisoformat(f"{date}T{clock}{offset}")
    return calendar.timegm(moment.utctimetuple()) * NS


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to 9 fraction digits.

    Accepts Go's ``RFC3339`` and ``RFC3339Nano`` forms (``Z`` or ``+hh:mm``).
    Raises :class:`ValueError` on anything else.
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, clock, fraction, zone = match.groups()
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return _whole_seconds_ns(date, clock, zone) + nanos


def format_rfc3339_ns(ns: int) -> str:
    """``ns`` since the epoch as RFC 3339 in UTC with all nine fraction digits."""
    seconds, nanos = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class LogDecoder:
    """Turns frames into lines (or parts of long lines), joining partial frames per stream.

    One decoder follows one container across many HTTP responses: partial
    lines carry over from one response to the next. ``begin(skip)`` starts a
    response and ignores its first ``skip`` frames, which lets a failed read be
    retried with the same query without yielding any line twice.
    """

    def __init__(self, part_bytes: int = DEFAULT_PART_BYTES) -> None:
        """A decoder with no partial lines; lines longer than ``part_bytes`` come in parts."""
        self._buffer = bytearray()
        self._lines: dict[LogStreamName, PartAssembler] = {
            "stdout": PartAssembler("stdout", part_bytes),
            "stderr": PartAssembler("stderr", part_bytes),
        }
        self._skip = 0
        self.frames = 0
        """Complete frames seen in the current response (including skipped ones)."""

    def begin(self, skip: int = 0) -> None:
        """Start decoding a new response, ignoring its first ``skip`` frames."""
        self._buffer.clear()
        self._skip = skip
        self.frames = 0

    def feed(self, data: bytes, out: list[LogLine]) -> None:
        """Decode the complete frames in ``data`` (plus earlier leftovers) into ``out``."""
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        pos = 0
        while size - pos >= HEADER_SIZE:
            length = int.from_bytes(buffer[pos + 4 : pos + HEADER_SIZE], "big")
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            if self.frames >= self._skip:
                stream = _STREAMS.get(buffer[pos])
                if stream is not None:
                    self._frame(stream, bytes(buffer[pos + HEADER_SIZE : end]), out)
            self.frames += 1
            pos = end
        del buffer[:pos]

    def _frame(self, stream: LogStreamName, payload: bytes, out: list[LogLine]) -> None:
        stamp, _, body = payload.partition(b" ")
        try:
            time_ns = parse_rfc3339_ns(stamp.decode("ascii"))
        except (ValueError, UnicodeDecodeError):  # no timestamp: keep the text, stamp it now
            time_ns, body = time.time_ns(), payload
        line = self._lines[stream]
        pieces = body.split(b"\n")
        # A line carries the time of its first piece (a partial goes on with its own).
        for piece in pieces[:-1]:
            line.add(piece, time_ns, True, out)
        if pieces[-1]:  # no newline after it: (the start of) a partial line
            line.add(pieces[-1], time_ns, False, out)

    def finish(self, out: list[LogLine]) -> None:
        """End of output (the container stopped): partial lines become lines."""
        for line in self._lines.values():
            line.finish(out)
