"""Reading a container's k8s-file log straight from the agent's host.

conmon writes every run container's output to one file (``podman inspect``:
``.HostConfig.LogConfig.Path``), one *record* per line or piece of a line::

    2026-11-30T14:12:07.147342335+00:00 stdout F a whole line, or its last piece
    2026-11-30T14:12:07.147460320+00:00 stdout P a piece of a longer line (no newline)

``F`` ends a line; ``P`` is a piece that the next record of the same stream
continues: conmon reads the container's pipes 8 KiB at a time, so a longer
line (or output with no newline yet) comes in several records, cut anywhere,
even inside a UTF-8 character. An empty line is ``... stdout F `` with nothing
after the space. Times are RFC 3339 with nanoseconds and the host's offset.

:class:`LogFileTail` follows such a file by offset, so each record is read
once, in order, as soon as it is written (no window re-reads through the API).
The pieces are joined into lines, cut into parts of at most the part limit
(:mod:`agent.logparts`) as they arrive. The log size cap
(``--container-log-max-size``, conmon's ``--log-size-max``) is enforced by
conmon *rotating* the file: it closes it, creates ``ctr.log.tmp`` and renames
that over ``ctr.log`` (seen on Podman 4.3.1 / conmon 2.1). A tail opens each
new file as soon as it sees it (at every read), keeps reading the old one to
its end (nothing is lost, however far behind the writer it is, up to a few
files) and then continues in the next from offset 0. A file emptied in
place instead (size below the offset) is read again from its start. Either
way a tail reports the event in ``rotations``/``truncations``.

Numbering: a tail gives every line (or part) its number in its stream
(``LogLine.sequence``), counting on across the files it reads. A tail opened
on a file that replaced others (a new stream re-reads the container from what
is left) starts from the numbers the earlier files ended with, which a
:class:`SequenceBases` remembers for as long as the agent runs, so the lines
keep their numbers and the control plane's deduplication keeps working.

Blocking: :class:`LogFileTail` reads files and runs in a reader thread; the
parser is pure and unit-tested on its own.
"""

from __future__ import annotations

import os
from collections import deque
from typing import BinaryIO

from agent.logparts import DEFAULT_PART_BYTES, PartAssembler
from agent.podman_logs import parse_rfc3339_ns
from agent.runtime import LogLine, LogStreamName

READ_BYTES = 1 << 20
"""Bytes a tail reads at most per call (what one call holds in memory)."""
HELD_FILES = 4
"""Log files a tail keeps open at once: the one it reads and newer ones waiting."""
MAX_RECORD_BYTES = 4 * READ_BYTES
"""A longer record is dropped (conmon's are at most its 8 KiB buffer plus the header)."""
_STREAMS: dict[bytes, LogStreamName] = {b"stdout": "stdout", b"stderr": "stderr"}


FileId = tuple[int, int]
"""A file's device and inode."""
Counts = tuple[int, int]
"""Lines (and parts) of stdout and stderr."""


class SequenceBases:
    """Per container, the numbers each log file started at (for files that replaced
    others); a few integers per rotation, kept while the agent runs."""

    def __init__(self) -> None:
        """Nothing known."""
        self._bases: dict[str, dict[FileId, Counts]] = {}

    def get(self, name: str, file: FileId) -> Counts:
        """Where numbering starts in ``file`` of container ``name`` (0, 0 unless it replaced)."""
        return self._bases.get(name, {}).get(file, (0, 0))

    def record(self, name: str, file: FileId, start: Counts) -> None:
        """``file`` of ``name`` starts at ``start``."""
        self._bases.setdefault(name, {})[file] = start

    def forget(self, name: str) -> None:
        """The container is gone."""
        self._bases.pop(name, None)


class K8sLogParser:
    """Records of a k8s-file log (in any chunks) into lines and parts of long lines."""

    def __init__(self, part_bytes: int = DEFAULT_PART_BYTES, start: Counts = (0, 0)) -> None:
        """A parser at the start of a file, with no line begun; lines are numbered
        from ``start`` (stdout, stderr)."""
        self._rest = bytearray()
        self._lines: dict[LogStreamName, PartAssembler] = {
            "stdout": PartAssembler("stdout", part_bytes),
            "stderr": PartAssembler("stderr", part_bytes),
        }
        self._lines["stdout"].sequence, self._lines["stderr"].sequence = start
        self._stamp = b""
        self._stamp_ns = 0
        self.bad_records = 0
        """Records that were not ``<time> <stream> <F|P> <text>`` (skipped)."""

    def feed(self, data: bytes, out: list[LogLine]) -> None:
        """Parse the complete records in ``data`` (after what an earlier call left)."""
        if not data:
            return
        end = data.rfind(b"\n")
        if end < 0:
            self._rest += data
            if len(self._rest) > MAX_RECORD_BYTES:  # not conmon's: never hold it all
                self.bad_records += 1
                self._rest.clear()
            return
        if self._rest:
            self._rest += data[: end + 1]
            chunk: bytes = bytes(self._rest)
            self._rest = bytearray(data[end + 1 :])
        else:
            chunk = data[: end + 1]
            self._rest = bytearray(data[end + 1 :])
        records = chunk.split(b"\n")
        records.pop()  # after the last newline: nothing
        for record in records:
            self._record(record, out)

    def new_file(self) -> None:
        """The reading continues in another file: a record cut off by the end of
        the previous one cannot be completed (conmon writes whole records)."""
        if self._rest:
            self.bad_records += 1
            self._rest.clear()

    @property
    def counts(self) -> Counts:
        """The numbers the next lines of stdout and stderr get."""
        return (self._lines["stdout"].sequence or 0, self._lines["stderr"].sequence or 0)

    def finish(self, out: list[LogLine]) -> None:
        """The output ended: begun lines end here."""
        self.new_file()
        for line in self._lines.values():
            line.finish(out)

    def _record(self, record: bytes, out: list[LogLine]) -> None:
        fields = record.split(b" ", 3)
        if len(fields) < 3:
            self.bad_records += 1
            return
        stream = _STREAMS.get(fields[1])
        if stream is None:
            self.bad_records += 1
            return
        stamp = fields[0]
        if stamp != self._stamp:  # conmon stamps a whole read with one time
            try:
                self._stamp_ns = parse_rfc3339_ns(stamp.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                self.bad_records += 1
                return
            self._stamp = stamp
        text = fields[3] if len(fields) == 4 else b""
        self._lines[stream].add(text, self._stamp_ns, fields[2] != b"P", out)


class LogFileTail:
    """Follows one container's k8s-file log by offset, across rotations (blocking).

    Every call looks whether conmon has put a newer file in place and opens it
    at once, so a reader that lags behind a fast writer still has each file,
    however often conmon replaces it meanwhile (up to ``hold`` files open at
    once: a file that appears beyond that may be gone by the time the reader
    gets there, and is counted in ``skipped``; each held file keeps up to the
    size cap of disk space in use until it has been read).
    """

    def __init__(
        self,
        path: str,
        part_bytes: int = DEFAULT_PART_BYTES,
        bases: SequenceBases | None = None,
        name: str = "",
        hold: int = HELD_FILES,
    ) -> None:
        """Open ``path`` at its start; raises :class:`OSError` if it cannot be read.

        With ``bases``, lines are numbered from where the file started (as
        recorded under container ``name``), and each new file is recorded."""
        self.path = path
        first: BinaryIO = open(path, "rb", buffering=0)
        self._files: deque[tuple[BinaryIO, FileId]] = deque([(first, _file_id(first))])
        """The file being read, then newer ones not read yet, oldest first."""
        self._hold = max(1, hold)
        self._bases = bases
        self._name = name
        self._part_bytes = part_bytes
        self._parser = K8sLogParser(part_bytes, self._start())
        self.rotations = 0
        """Times the tail moved on to a file conmon put in place of the one it read."""
        self.truncations = 0
        """Times the file was found shorter than what was already read (lines may be lost)."""
        self.skipped = 0
        """Files seen while ``hold`` files were open already and replaced before there
        was room for them (their lines were not read)."""
        self._waiting: set[FileId] = set()

    def read(self, out: list[LogLine], limit: int = READ_BYTES) -> int:
        """Parse what was written since the last call (up to ``limit`` bytes) into
        ``out``; returns the bytes read, 0 when there is nothing new."""
        self._hold_newer()
        current = self._files[0][0]
        data = current.read(limit)
        if data:
            self._parser.feed(data, out)
            return len(data)
        if len(self._files) > 1:
            # conmon closed this file before it renamed the newer one into place,
            # which was there before this read: this file is complete. Move on.
            self._files.popleft()
            current.close()
            self._parser.new_file()
            self.rotations += 1
            if self._bases is not None:
                self._bases.record(self._name, self._files[0][1], self._parser.counts)
            return self.read(out, limit)
        if os.fstat(current.fileno()).st_size < current.tell():  # emptied in place
            current.seek(0)
            self._parser.new_file()
            self.truncations += 1
            return self.read(out, limit)
        return 0

    def _hold_newer(self) -> None:
        """Open the file now at the path if it is newer than every file held."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:  # the container was removed: what is open is all
            return
        found = (at_path.st_dev, at_path.st_ino)
        if found == self._files[-1][1]:
            return
        if len(self._files) >= self._hold:
            self._waiting.add(found)
            return
        try:
            newer: BinaryIO = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            return
        newer_id = _file_id(newer)
        if any(newer_id == held for _, held in self._files):
            newer.close()  # replaced back and forth between the two looks: nothing new
            return
        self._files.append((newer, newer_id))
        self._waiting.discard(newer_id)
        self.skipped += len(self._waiting)  # replaced by this one before they were held
        self._waiting.clear()

    def finish(self, out: list[LogLine]) -> None:
        """No more output will come: begun lines end here."""
        self._parser.finish(out)

    def rewind(self) -> None:
        """Read the held files again from the start of the first (numbered as
        before), then on.

        The first may be a file conmon has replaced since: it is still
        complete, and the tail moves on to the newer ones after it."""
        for file, _ in self._files:
            file.seek(0)
        self._parser = K8sLogParser(self._part_bytes, self._start())

    def _start(self) -> Counts:
        if self._bases is None:
            return (0, 0)
        return self._bases.get(self._name, self._files[0][1])

    @property
    def bad_records(self) -> int:
        """Records skipped as malformed."""
        return self._parser.bad_records

    def close(self) -> None:
        """Close the files."""
        while self._files:
            self._files.popleft()[0].close()


def _file_id(file: BinaryIO) -> FileId:
    stat = os.fstat(file.fileno())
    return (stat.st_dev, stat.st_ino)
