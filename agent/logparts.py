"""Lines cut into parts: no line, however long, is held or shipped whole.

A line longer than the part limit (:data:`DEFAULT_PART_BYTES`, 64 KiB of
UTF-8) is cut into parts of at most that many bytes; every part but the last
is *partial* (``LogLine.partial``, ``LogEntry.partial`` on the wire). Output
that has no newline yet is cut the same way as it arrives, so a reader holds
at most one part per stream however much a program prints without a newline.

Cuts fall between characters (never inside a UTF-8 sequence, unless the bytes
are not UTF-8 at all), and depend only on the line's bytes, never on how they
arrived: a line re-read from the start is cut into the same parts, so each
part keeps its sequence number and the control plane's deduplication still
works. Every part carries the time of the line's first byte, so the parts of
one line stay together in time order and a reader joining them gets the
line's time.
"""

from __future__ import annotations

from agent.runtime import LogLine, LogStreamName
from muster.common.limits import LOG_PART_BYTES

DEFAULT_PART_BYTES = LOG_PART_BYTES
"""Longest part of a line, in bytes of UTF-8."""
MIN_PART_BYTES = 16
"""Smallest accepted part limit (a cut must fit a whole UTF-8 character)."""


def cut_point(data: bytes | bytearray, start: int, limit: int) -> int:
    """Where to end a part of ``data`` that begins at ``start``: at most ``limit``
    bytes on, moved back to the start of a character cut in two (at most 3 bytes;
    bytes that are not UTF-8 are cut at the limit)."""
    end = start + limit
    for back in range(4):
        if data[end - back] & 0xC0 != 0x80:  # not a continuation byte: a character starts
            return end - back
    return end


def decode(data: bytes | bytearray | memoryview) -> str:
    """Bytes of a line as text (invalid UTF-8 replaced)."""
    return bytes(data).decode("utf-8", errors="replace")


class PartAssembler:
    """One stream's current line, shipped in parts of at most ``limit`` bytes."""

    def __init__(self, stream: LogStreamName, limit: int = DEFAULT_PART_BYTES) -> None:
        """An assembler with no line begun."""
        if limit < MIN_PART_BYTES:
            raise ValueError(f"part limit must be at least {MIN_PART_BYTES} bytes, not {limit}")
        self.stream: LogStreamName = stream
        self.limit = limit
        self._buffer = bytearray()
        self._time_ns: int | None = None
        self.sequence: int | None = None
        """When set, the number given to the next part (and counted on)."""

    @property
    def pending(self) -> bool:
        """A line is begun and not ended."""
        return self._time_ns is not None

    @property
    def held_bytes(self) -> int:
        """Bytes of the current line held until more of it comes (at most ``limit``)."""
        return len(self._buffer)

    def add(self, data: bytes | bytearray, time_ns: int, end: bool, out: list[LogLine]) -> None:
        """``data`` continues the current line (or begins one, stamped ``time_ns``);
        full parts go to ``out``, and with ``end`` the line's last part too."""
        if self._time_ns is None:
            if end and len(data) <= self.limit:  # a whole line in one piece: most lines
                out.append(LogLine(self.stream, time_ns, decode(data), False, self._number()))
                return
            self._time_ns = time_ns
        buffer = self._buffer
        buffer += data
        limit = self.limit
        if len(buffer) > limit:  # only then: a line of exactly ``limit`` bytes is one part
            start = 0
            while len(buffer) - start > limit:
                cut = cut_point(buffer, start, limit)
                text = decode(buffer[start:cut])
                out.append(LogLine(self.stream, self._time_ns, text, True, self._number()))
                start = cut
            del buffer[:start]
        if end:
            out.append(LogLine(self.stream, self._time_ns, decode(buffer), False, self._number()))
            buffer.clear()
            self._time_ns = None

    def _number(self) -> int | None:
        number = self.sequence
        if number is not None:
            self.sequence = number + 1
        return number

    def finish(self, out: list[LogLine]) -> None:
        """The output ended: a begun line ends here."""
        if self._time_ns is not None:
            self.add(b"", self._time_ns, True, out)


def split_line(line: LogLine, limit: int = DEFAULT_PART_BYTES) -> list[LogLine]:
    """``line`` as parts of at most ``limit`` bytes (itself when it is short enough);
    the last part keeps ``line.partial``."""
    if len(line.text) * 4 <= limit:  # no character takes more than 4 bytes
        return [line]
    data = line.text.encode("utf-8", errors="replace")  # lone surrogates become "?"
    if len(data) <= limit:
        return [line]
    parts: list[LogLine] = []
    assembler = PartAssembler(line.stream, limit)
    assembler.add(data, line.time_ns, not line.partial, parts)
    if line.partial:  # what is left is the start of the next part, not an end
        rest = assembler._buffer
        parts.append(LogLine(line.stream, line.time_ns, decode(rest), True))
    return parts
