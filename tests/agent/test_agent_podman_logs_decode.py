"""Decoding Podman's multiplexed, timestamped log frames (no Podman needed)."""

from __future__ import annotations

import struct

import pytest

from agent.podman_logs import LogDecoder, format_rfc3339_ns, parse_rfc3339_ns
from agent.runtime import LogLine

T0 = 1_795_626_489_000_000_000  # 2026-11-25T17:08:09Z


def frame(stream: int, payload: bytes) -> bytes:
    """One frame as Podman sends it."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def out(text: bytes, stamp: bytes = b"2026-11-25T17:08:09Z") -> bytes:
    return frame(1, stamp + b" " + text)


def err(text: bytes, stamp: bytes = b"2026-11-25T17:08:09Z") -> bytes:
    return frame(2, stamp + b" " + text)


def decode(*chunks: bytes, finish: bool = False) -> list[LogLine]:
    decoder = LogDecoder()
    lines: list[LogLine] = []
    for chunk in chunks:
        decoder.feed(chunk, lines)
    if finish:
        decoder.finish(lines)
    return lines


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-25T17:08:09Z", T0),
        ("2026-11-25T17:08:09.284475243Z", T0 + 284_475_243),
        ("2026-11-25T17:08:09.284475243+00:00", T0 + 284_475_243),
        ("2026-11-25T18:08:09.5+01:00", T0 + 500_000_000),
        ("2026-11-25T17:08:09.000000001Z", T0 + 1),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_rfc3339_parses_with_full_nanosecond_precision(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


def test_rfc3339_rejects_garbage_and_round_trips() -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns("yesterday")
    for ns in (T0, T0 + 1, T0 + 999_999_999, 0):
        assert parse_rfc3339_ns(format_rfc3339_ns(ns)) == ns
    assert format_rfc3339_ns(T0 + 5) == "2026-11-25T17:08:09.000000005Z"


def test_frames_become_lines_per_stream_without_newlines() -> None:
    lines = decode(
        out(b"out1\n"), err(b"err1\n", b"2026-11-25T17:08:10.5Z"), out(b"\n"), out(b"out2\n")
    )
    assert lines == [
        LogLine("stdout", T0, "out1"),
        LogLine("stderr", T0 + 1_500_000_000, "err1"),
        LogLine("stdout", T0, ""),
        LogLine("stdout", T0, "out2"),
    ]


def test_frames_split_anywhere_across_reads_decode_the_same() -> None:
    data = out(b"alpha\n") + err(b"beta\n") + out(b"gamma\n")
    whole = decode(data)
    for cut in range(1, len(data)):
        assert decode(data[:cut], data[cut:]) == whole
    assert decode(*[data[i : i + 1] for i in range(len(data))]) == whole


def test_partial_frames_join_per_stream_with_the_first_pieces_time() -> None:
    later = b"2026-11-25T17:08:11Z"
    lines = decode(
        out(b"ab"),
        err(b"e-part"),
        out(b"cd", later),
        out(b"ef\n", later),
        err(b"-end\n", later),
    )
    assert lines == [
        LogLine("stdout", T0, "abcdef"),
        LogLine("stderr", T0, "e-part-end"),
    ]


def test_a_last_line_without_newline_is_kept_until_the_end() -> None:
    decoder = LogDecoder()
    lines: list[LogLine] = []
    decoder.feed(out(b"done\n") + err(b"no-newline"), lines)
    assert lines == [LogLine("stdout", T0, "done")]
    decoder.begin()  # partial lines survive into the next response
    decoder.feed(b"", lines)
    decoder.finish(lines)
    assert lines[-1] == LogLine("stderr", T0, "no-newline")
    decoder.finish(lines)  # nothing twice
    assert len(lines) == 2


def test_invalid_utf8_is_replaced_and_multibyte_characters_split_over_partials_survive() -> None:
    snowman = "☃".encode()
    lines = decode(out(b"bad \xff byte\n"), out(snowman[:1]), out(snowman[1:] + b"\n"))
    assert [line.text for line in lines] == ["bad \ufffd byte", "☃"]


def test_skip_ignores_frames_already_handed_over_by_a_failed_read() -> None:
    data = out(b"1\n") + out(b"2") + out(b"3\n") + out(b"4\n")
    decoder = LogDecoder()
    lines: list[LogLine] = []
    decoder.begin()
    decoder.feed(data[: len(out(b"1\n")) + len(out(b"2")) + 3], lines)  # read breaks mid-frame
    done = decoder.frames
    assert done == 2 and [x.text for x in lines] == ["1"]
    decoder.begin(skip=done)
    decoder.feed(data, lines)
    assert [x.text for x in lines] == ["1", "23", "4"]


def test_frames_of_other_streams_are_ignored_and_untimed_text_is_kept() -> None:
    lines = decode(frame(0, b"2026-11-25T17:08:09Z stdin?\n"), frame(1, b"plain\n"))
    assert [(x.stream, x.text) for x in lines] == [("stdout", "plain")]
