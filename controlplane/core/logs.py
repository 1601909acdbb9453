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

    def source(self, single: bool) -> str:
        """Prefix label in merged output: "job", "worker-1"; "job" for a lone job
        replica, so that single-container runs read naturally."""
        if self.role == "job" and single:
            return "job"
        return f"{self.role}-{self.replica}"


@dataclass(frozen=True)
class StoredLine:
    """A stored line with its arrival id (grows as lines arrive)."""

    id: int
    line: LogLine
