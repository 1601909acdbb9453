"""The instants a run's deadlines count from: when each worker's readiness
clock runs, and the stored anchors (creation, placement, container starts) a
caller measures elapsed time against. `runs.check_deadlines` applies them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from controlplane.core.run_model import Replica, Run


def readiness_clock(run: Run, worker: Replica) -> datetime | None:
    """Since when a worker that is not ready yet counts against the readiness
    timeout: from its container's start (the first report past pulling), so
    that pulling its image never counts. A worker whose agent has reported
    nothing yet counts from placement (so a silent agent still fails the
    run), one that is pulling does not count at all (the run timeout bounds
    a pull; a failed pull fails the run at once), and one stored before the
    clock existed counts from placement, as it did then."""
    if run.placed_at is None or run.released or worker.ready:
        return None
    if worker.state == "pulling":
        return None
    return worker.started_at or run.placed_at


def anchor_of(run: Run, worker: Replica) -> str | None:
    """The name of the instant `readiness_clock` counts from ("placed" or
    "worker-i"), or None when the worker's readiness clock is not running."""
    since = readiness_clock(run, worker)
    if since is None:
        return None
    return f"worker-{worker.index}" if worker.started_at is not None else "placed"


def anchors(run: Run) -> dict[str, datetime]:
    """The stored (wall-clock) instants that deadlines count from, by name:
    "created", "placed" and "worker-i" (a worker's container start)."""
    found = {"created": run.created_at}
    if run.placed_at is not None:
        found["placed"] = run.placed_at
    for w in run.workers:
        if w.started_at is not None:
            found[f"worker-{w.index}"] = w.started_at
    return found


Elapsed = Callable[[str], timedelta]
"""How long ago the named anchor was (see `anchors`), as the caller measures time."""
