"""Teardowns that left containers behind, and when each is tried again."""

from __future__ import annotations

from agent.backoff import backoff


class TeardownRetries:
    """Runs whose teardown left containers behind: failures so far, and when to retry.

    The pause doubles with each failure of the same run, from ``first`` up to
    ``longest`` seconds; a teardown that leaves nothing behind clears its run.
    """

    def __init__(self, first: float, longest: float) -> None:
        """Pauses from ``first`` to ``longest`` seconds."""
        self._first = first
        self._longest = longest
        self._failed: dict[int, tuple[int, float]] = {}
        """run id -> (failures so far, retry at loop time)."""

    def failed(self, run_id: int, now: float) -> float:
        """The teardown of ``run_id`` left containers behind at ``now``: the pause before
        its next try."""
        failures = self._failed.get(run_id, (0, 0.0))[0] + 1
        delay = backoff(self._first, self._longest, failures)
        self._failed[run_id] = (failures, now + delay)
        return delay

    def succeeded(self, run_id: int) -> None:
        """The teardown of ``run_id`` left nothing behind."""
        self._failed.pop(run_id, None)

    def due(self, now: float) -> list[tuple[int, int]]:
        """(run id, failures so far) of every run whose pause has passed at ``now``."""
        return [(run_id, n) for run_id, (n, at) in list(self._failed.items()) if at <= now]
