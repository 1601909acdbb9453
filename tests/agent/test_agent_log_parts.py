"""Long lines in parts, and the k8s-file log reader (no Podman needed: the files
are written here the way conmon writes them)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from agent.logparts import PartAssembler, split_line
from agent.podman_logfile import K8sLogParser, LogFileTail, SequenceBases
from agent.podman_logs import LogDecoder
from agent.runtime import LogLine

T0 = 1_795_626_489_000_000_000  # 2026-11-25T17:08:09Z
STAMP = b"2026-11-25T17:08:09.000000000+00:00"
LIMIT = 64


def parts_of(data: bytes, limit: int = LIMIT, pieces: int = 1) -> list[LogLine]:
    """``data`` as one line, fed in ``pieces`` pieces of about equal size."""
    assembler = PartAssembler("stdout", limit)
    out: list[LogLine] = []
    step = max(1, -(-len(data) // pieces))
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    for i, chunk in enumerate(chunks):
        assembler.add(chunk, T0 + i, i == len(chunks) - 1, out)
    return out


def joined(parts: list[LogLine]) -> str:
    assert all(p.partial for p in parts[:-1]) and not parts[-1].partial
    return "".join(p.text for p in parts)


def test_a_line_up_to_the_limit_is_one_part_and_longer_lines_are_cut_at_it() -> None:
    assert parts_of(b"x" * LIMIT) == [LogLine("stdout", T0, "x" * LIMIT)]
    assert parts_of(b"") == [LogLine("stdout", T0, "")]
    cut = parts_of(b"x" * (LIMIT + 1))
    assert [(p.text, p.partial) for p in cut] == [("x" * LIMIT, True), ("x", False)]
    many = parts_of(b"y" * (5 * LIMIT))
    assert [len(p.text) for p in many] == [LIMIT] * 5
    assert {p.time_ns for p in many} == {T0}, "every part has the time of the line's start"


def test_cuts_fall_between_characters_and_do_not_depend_on_how_bytes_arrived() -> None:
    text = "aé€😀" * 40  # 1, 2, 3 and 4 bytes
    data = text.encode()
    whole = parts_of(data)
    assert joined(whole) == text
    assert all(len(p.text.encode()) <= LIMIT for p in whole)
    assert "\ufffd" not in "".join(p.text for p in whole)
    for pieces in (2, 3, 7, len(data)):
        assert parts_of(data, pieces=pieces) == [
            LogLine("stdout", T0, p.text, p.partial) for p in whole
        ]
    # Bytes that are not UTF-8 at all are cut at the limit.
    assert [len(p.text) for p in parts_of(b"\x80" * (LIMIT + 3))] == [LIMIT, 3]


def test_an_assembler_holds_at_most_one_part_of_output_without_newline() -> None:
    assembler = PartAssembler("stderr", LIMIT)
    out: list[LogLine] = []
    for _ in range(1000):
        assembler.add(b"z" * 10, T0, False, out)
        assert assembler.held_bytes <= LIMIT
    assert assembler.pending
    assembler.finish(out)
    assert joined(out) == "z" * 10_000 and not assembler.pending
    assert {p.stream for p in out} == {"stderr"}


def test_split_line_cuts_long_lines_and_keeps_partial_on_the_last_part() -> None:
    short = LogLine("stdout", T0, "short")
    assert split_line(short, LIMIT) == [short]
    long = LogLine("stdout", T0, "é" * LIMIT)  # 2 * LIMIT bytes
    parts = split_line(long, LIMIT)
    assert joined(parts) == long.text and len(parts) == 2
    begun = split_line(LogLine("stdout", T0, "w" * (LIMIT + 1), partial=True), LIMIT)
    assert [(len(p.text), p.partial) for p in begun] == [(LIMIT, True), (1, True)]
    with pytest.raises(ValueError):
        PartAssembler("stdout", 8)


def record(text: bytes, tag: bytes = b"F", stream: bytes = b"stdout", stamp: bytes = STAMP):
    return stamp + b" " + stream + b" " + tag + b" " + text + b"\n"


def parse(data: bytes, limit: int = LIMIT, chunks: int = 1) -> list[LogLine]:
    parser = K8sLogParser(limit)
    out: list[LogLine] = []
    step = max(1, -(-len(data) // chunks))
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step], out)
    parser.finish(out)
    return out


def test_k8s_records_become_lines_with_their_streams_and_times() -> None:
    data = (
        record(b"out1")
        + record(b"err1", stream=b"stderr", stamp=b"2026-11-25T18:08:10.5+01:00")
        + STAMP
        + b" stdout F \n"  # an empty line: nothing after the space
        + record(b"half-", b"P")
        + record(b"line")
        + record(b"caf\xc3", b"P")  # conmon cuts anywhere, even inside a character
        + record(b"\xa9 \xff")
        + record(b"unfinished", b"P", b"stderr")
    )
    expected = [  # numbered per stream
        LogLine("stdout", T0, "out1", sequence=0),
        LogLine("stderr", T0 + 1_500_000_000, "err1", sequence=0),
        LogLine("stdout", T0, "", sequence=1),
        LogLine("stdout", T0, "half-line", sequence=2),
        LogLine("stdout", T0, "café \ufffd", sequence=3),
        LogLine("stderr", T0, "unfinished", sequence=1),
    ]
    assert parse(data, limit=1024) == expected
    for chunks in (2, 5, len(data)):  # records cut anywhere across reads
        assert parse(data, limit=1024, chunks=chunks) == expected


def test_long_lines_from_many_records_come_in_parts_and_bad_records_are_skipped() -> None:
    pieces = [b"%03d" % i * 10 for i in range(20)]  # 20 records of 30 bytes
    data = b"".join(record(p, b"P") for p in pieces[:-1]) + record(pieces[-1])
    parser = K8sLogParser(100)
    out: list[LogLine] = []
    parser.feed(b"garbage\n" + STAMP + b" stdweird F x\nnot-a-time stdout F x\n" + data, out)
    assert parser.bad_records == 3
    assert joined(out) == b"".join(pieces).decode()
    assert [len(p.text) for p in out] == [100] * 6


class Conmon:
    """Writes a k8s-file log the way conmon does, including its rotation at a cap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "ab", buffering=0)

    def write(self, *lines: str) -> None:
        self.file.write(b"".join(record(x.encode()) for x in lines))

    def rotate(self) -> None:
        """Close, create ctr.log.tmp, rename it over ctr.log (conmon's --log-size-max)."""
        self.file.close()
        tmp = self.path.with_suffix(".tmp")
        self.file = open(tmp, "ab", buffering=0)
        os.rename(tmp, self.path)

    def close(self) -> None:
        self.file.close()


def drain(tail: LogFileTail) -> list[str]:
    out: list[LogLine] = []
    while tail.read(out, limit=50):  # small reads: records are cut across them
        pass
    return [x.text for x in out]


def test_a_tail_reads_each_line_once_across_rotations_truncation_and_removal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ctr.log"
    conmon = Conmon(path)
    conmon.write("a1", "a2")
    tail = LogFileTail(str(path), LIMIT)
    try:
        assert drain(tail) == ["a1", "a2"]
        assert drain(tail) == []
        conmon.write("a3")
        conmon.rotate()  # lines written before the rotation and not read yet survive
        conmon.write("b1")
        assert drain(tail) == ["a3", "b1"]
        assert tail.rotations == 1
        conmon.rotate()
        conmon.rotate()  # two rotations before the next look: the middle file was empty
        conmon.write("c1")
        assert drain(tail) == ["c1"] and tail.rotations == 2
        os.truncate(path, 0)  # emptied in place: read again from the start
        assert drain(tail) == [] and tail.truncations == 1
        conmon.write("d1")
        assert drain(tail) == ["d1"]
        conmon.write("e1")
        conmon.file.write(record(b"unfinished", b"P"))
        conmon.close()
        os.unlink(path)  # the container was removed: what was open is still read
        assert drain(tail) == ["e1"]
        out: list[LogLine] = []
        tail.finish(out)
        assert [(x.text, x.partial) for x in out] == [("unfinished", False)]
    finally:
        tail.close()


def test_an_unreadable_log_file_raises_so_the_runtime_falls_back(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        LogFileTail(str(tmp_path / "missing" / "ctr.log"))


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_the_api_decoder_cuts_long_partial_frames_into_parts() -> None:
    decoder = LogDecoder(part_bytes=LIMIT)
    out: list[LogLine] = []
    for _ in range(10):  # output with no newline: 10 frames of 40 bytes
        decoder.feed(frame(1, b"2026-11-25T17:08:09Z " + b"q" * 40), out)
    assert [len(x.text) for x in out] == [LIMIT] * 6 and all(x.partial for x in out)
    decoder.feed(frame(1, b"2026-11-25T17:08:10Z end\n"), out)
    assert joined(out) == "q" * 400 + "end"
    assert {x.time_ns for x in out} == {T0}


def test_lines_keep_their_numbers_across_rotations_and_rereads(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    conmon = Conmon(path)
    bases = SequenceBases()
    conmon.write("a0", "a1")
    first = LogFileTail(str(path), LIMIT, bases, "c")

    def numbered(tail: LogFileTail) -> list[tuple[str, int | None]]:
        out: list[LogLine] = []
        while tail.read(out, limit=50):
            pass
        return [(x.text, x.sequence) for x in out]

    try:
        assert numbered(first) == [("a0", 0), ("a1", 1)]
        conmon.rotate()
        conmon.write("b2")
        assert numbered(first) == [("b2", 2)]
        # A new stream's follower opening the current file numbers on from there.
        second = LogFileTail(str(path), LIMIT, bases, "c")
        assert numbered(second) == [("b2", 2)]
        second.close()
        # A held file is read again from its start, then the newer one.
        conmon.write("b3")
        conmon.rotate()
        conmon.write("c4")
        first.rewind()
        assert numbered(first) == [("b2", 2), ("b3", 3), ("c4", 4)]
        assert LogFileTail(str(tmp_path / "ctr.log"), LIMIT).read([]) > 0  # unnumbered: 0-based
    finally:
        first.close()
        conmon.close()


def test_a_lagging_tail_holds_each_new_file_until_it_gets_there(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    conmon = Conmon(path)
    tail = LogFileTail(str(path), LIMIT, hold=3)
    got: list[LogLine] = []
    try:
        conmon.write(*(f"a{i}" for i in range(20)))
        tail.read(got, limit=100)  # far behind: still in the first file
        for generation in "bcde":  # conmon replaces the file four times meanwhile
            conmon.rotate()
            conmon.write(*(f"{generation}{i}" for i in range(20)))
            tail.read(got, limit=100)  # each look holds the newest file
        while tail.read(got, limit=100):
            pass
        texts = [x.text for x in got]
        # Three files are held at most: the one being read and two waiting; the
        # fourth file that appeared meanwhile was gone by the time there was room.
        assert tail.skipped == 1
        kept = [f"{g}{i}" for g in "abc" for i in range(20)] + [f"e{i}" for i in range(20)]
        assert texts == kept
        assert [x.sequence for x in got] == list(range(len(kept)))
    finally:
        tail.close()
        conmon.close()
