"""The orchestrator's knobs and constants."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from controlplane.core.images import DEFAULT_PULL_POLICY, PullPolicy
from controlplane.core.nodes import Liveness

log = logging.getLogger(__name__)


RESCHEDULE_EVERY = timedelta(seconds=5)
"""A scheduling round runs at least this often (anti-starvation aging), besides wake-ups."""
REQUEST_TTL = timedelta(hours=24)
"""How long a CreateRun request id is remembered (a retry within it returns the same run)."""
ENDED_KEPT = 2000
"""Recently ended runs kept in memory for the reports that follow their end."""


@dataclass(frozen=True)
class Settings:
    """Timing knobs; tests shorten them."""

    readiness_timeout: timedelta = timedelta(seconds=120)
    liveness: Liveness = field(default_factory=Liveness)
    starvation_after: timedelta = timedelta(seconds=60)
    heartbeat_interval: timedelta = timedelta(seconds=2)
    tick: timedelta = timedelta(seconds=0.5)
    default_pull_policy: PullPolicy = DEFAULT_PULL_POLICY
    """The pull policy of a run created without one (--default-pull-policy)."""
    max_pending_runs: int = 10_000
    """Runs that may wait Pending at once; CreateRun beyond is RESOURCE_EXHAUSTED (0: no limit)."""
    max_streams: int = 1000
    """WatchRun and GetRunLogs streams open at once, in all (--max-streams)."""
    max_watchers_per_run: int = 100
    """WatchRun and GetRunLogs streams open at once on one run (--max-watchers-per-run)."""
    retain_finished: timedelta = timedelta(days=30)
    """Finished runs, their logs and tags are deleted this long after they
    finished (--retain-finished; 0: kept forever). See services/retention.py."""
    max_log_bytes_per_run: int = 1024**3
    """A run's stored log text beyond this loses its oldest lines (0: no cap)."""

    @property
    def heartbeat_seconds(self) -> int:
        """The heartbeat interval agents are told, in the whole seconds the wire
        carries: rounded down, at least 1."""
        return int(self.heartbeat_interval.total_seconds()) or 1
