"""`muster run logs`, and the log follower `run exec --logs` uses."""

from __future__ import annotations

import sys
from datetime import UTC
from typing import TextIO

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc
from muster_cli.client import Reconnect, fail, open_channel


class LogPrinter:
    """Prints merged lines once each, with optional prefixes and timestamps.

    A long line comes in parts (`partial` on all but the last, consecutive
    sequence numbers of one source and stream): the parts are joined, and the
    line is printed whole, with the time of its start, once its last part
    arrives (lines of other sources may be printed meanwhile).
    """

    def __init__(self, prefixed: bool, timestamps: bool, out: TextIO) -> None:
        self.prefixed = prefixed
        self.timestamps = timestamps
        self.out = out
        self.seen: set[tuple[str, int, int]] = set()
        self.begun: dict[tuple[str, int], tuple[pb.LogLine, list[str]]] = {}
        """Lines whose last part has not come yet, by source and stream."""
        self._ready: list[str] = []
        """Printed lines not yet written out (written a reply at a time)."""

    def emit(self, line: pb.LogLine) -> None:
        key = (line.source, line.stream, line.sequence)
        if key in self.seen:
            return
        self.seen.add(key)
        stream = (line.source, line.stream)
        begun = self.begun.get(stream)
        if line.partial:
            if begun is None:
                self.begun[stream] = (line, [line.text])
            else:
                begun[1].append(line.text)
            return
        if begun is not None:
            del self.begun[stream]
            first, texts = begun
            texts.append(line.text)
            self._print(first, "".join(texts))
        else:
            self._print(line, line.text)

    def close(self) -> None:
        """The logs ended: print lines whose last part never came as they are."""
        for first, texts in self.begun.values():
            self._print(first, "".join(texts))
        self.begun.clear()
        self.flush()

    def flush(self) -> None:
        """Write what was printed since the last flush, in one go."""
        if self._ready:
            self.out.write("".join(self._ready))
            self._ready.clear()
        self.out.flush()

    def _print(self, line: pb.LogLine, text: str) -> None:
        if not (self.timestamps or self.prefixed):
            self._ready.append(text + "\n")
            return
        parts = []
        if self.timestamps:
            when = line.time.ToDatetime(tzinfo=UTC)
            parts.append(when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{line.time.nanos:09d}Z")
        if self.prefixed:
            parts.append(f"[{line.source}]")
        parts.append(text)
        self._ready.append(" ".join(parts) + "\n")


def stream_logs(
    server: str,
    run_id: int,
    *,
    follow: bool,
    since: Timestamp | None,
    tail: int,
    timestamps: bool,
    prefixed: bool | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Print a run's logs; with `follow`, until the run's logs are complete,
    reconnecting if the control plane restarts, without missing or repeating
    a line (the server's resume point, plus a printed-lines filter)."""
    printer: LogPrinter | None = None
    retry = Reconnect(server, f"following run {run_id}")
    request = pb.GetRunLogsRequest(run_id=run_id, follow=follow, tail=tail)
    if since is not None:
        request.since.CopyFrom(since)
    while True:
        try:
            with open_channel(server) as ch:
                stub = pb_grpc.RunServiceStub(ch)
                if printer is None:
                    run = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).run
                    retry.progress()
                    many = len(run.replicas) > 1 if prefixed is None else prefixed
                    printer = LogPrinter(many, timestamps, out)
                for reply in stub.GetRunLogs(request):
                    retry.progress()
                    for line in reply.lines:
                        printer.emit(line)
                    printer.flush()
                    if reply.resume_after:
                        request.resume_after = reply.resume_after
            if printer is not None:
                printer.close()
            return
        except grpc.RpcError as err:
            if not follow and err.code() == grpc.StatusCode.UNAVAILABLE:
                fail(f"cannot reach the muster control plane at {server}")
            retry.failed(err)  # a follow reconnects
            # With a resume point the server continues exactly where it was; without
            # one (cut off while sending stored lines) the request starts over and
            # the printer skips what it already printed.
