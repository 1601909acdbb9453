"""Limits on long-lived server streams (WatchRun, GetRunLogs): at most
`max_streams` at once in all, and at most `max_per_run` on one run, so that
no client (or crowd of clients) holds an unbounded share of the control
plane's memory and tasks. A stream over a limit is refused at once with
RESOURCE_EXHAUSTED naming the limit; every stream gives its place back
however it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controlplane.core.errors import ResourceExhausted

DEFAULT_MAX_STREAMS = 1000
DEFAULT_MAX_PER_RUN = 100


class StreamLimits:
    """Counts open streams, in all and per run."""

    def __init__(
        self, max_streams: int = DEFAULT_MAX_STREAMS, max_per_run: int = DEFAULT_MAX_PER_RUN
    ) -> None:
        self.max_streams = max_streams
        self.max_per_run = max_per_run
        self._open = 0
        self._per_run: dict[int, int] = {}

    @property
    def open(self) -> int:
        """Streams open now."""
        return self._open

    def on_run(self, run_id: int) -> int:
        """Streams open now on one run."""
        return self._per_run.get(run_id, 0)

    @contextmanager
    def stream(self, run_id: int) -> Iterator[None]:
        """Hold a place for one stream on `run_id` (ResourceExhausted if there is none)."""
        if self._open >= self.max_streams:
            raise ResourceExhausted(
                f"the control plane has {self._open} watch and log streams open, its limit "
                f"(--max-streams {self.max_streams}); close some or try again later"
            )
        if self._per_run.get(run_id, 0) >= self.max_per_run:
            raise ResourceExhausted(
                f"run {run_id} has {self.max_per_run} watch and log streams open, the limit "
                f"per run (--max-watchers-per-run {self.max_per_run}); close some or try again "
                "later"
            )
        self._open += 1
        self._per_run[run_id] = self._per_run.get(run_id, 0) + 1
        try:
            yield
        finally:
            self._open -= 1
            left = self._per_run.pop(run_id) - 1
            if left:
                self._per_run[run_id] = left
