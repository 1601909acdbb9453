"""Log lines as the control plane stores and serves them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogLine:
    """One line a container wrote. (run_id, role, replica, stream, sequence) identifies it."""

    run_id: int
    role: str
    replica: int
    stream: str  # "stdout" | "stderr"
    sequence: int
    time_ns: int  # nanoseconds since the epoch, as the container runtime stamped it
    text: str
    partial: bool = False  # the line goes on in the next sequence number (a part of a long line)

    def source(self, single_job: bool) -> str:
        """Prefix label in merged output: `worker-1`, and `job` when the run has
        one job replica (`job-0`, `job-1`, ... when it has several)."""
        if self.role == "job" and single_job:
            return "job"
        return f"{self.role}-{self.replica}"


@dataclass(frozen=True)
class StoredLine:
    """A stored line with its arrival id (grows as lines arrive)."""

    id: int
    line: LogLine


def time_key(stored: StoredLine) -> tuple[int, int]:
    """Merged order of log lines: container time, then arrival (container
    runtimes may stamp whole seconds, and arrival keeps each stream's order)."""
    return (stored.line.time_ns, stored.id)
