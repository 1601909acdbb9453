"""A GetRunLogs reply carries every line as stored, in order, with its time to the nanosecond."""

from __future__ import annotations

from controlplane.api.convert import log_lines_response
from controlplane.core.logs import LogLine, StoredLine
from muster.v1 import run_pb2 as pb


def test_a_reply_carries_each_line_in_order_with_its_exact_time() -> None:
    chunk = [
        StoredLine(7, LogLine(1, "worker", 2, "stderr", 5, 1_700_000_000_123_456_789, "a", True)),
        StoredLine(8, LogLine(1, "job", 0, "stdout", 6, 1_700_000_001_000_000_001, "b")),
    ]
    reply = log_lines_response(chunk, single_job=True, resume_after=8)
    assert reply.resume_after == 8
    first, second = reply.lines
    assert (first.time.seconds, first.time.nanos) == (1_700_000_000, 123_456_789)
    assert (second.time.seconds, second.time.nanos) == (1_700_000_001, 1)
    assert (first.role, first.replica, first.stream) == (
        pb.REPLICA_ROLE_WORKER,
        2,
        pb.LOG_STREAM_STDERR,
    )
    assert (first.text, first.partial, first.sequence) == ("a", True, 5)
    assert (second.text, second.partial, second.source) == ("b", False, chunk[1].line.source(True))
    assert first.source == chunk[0].line.source(True)
