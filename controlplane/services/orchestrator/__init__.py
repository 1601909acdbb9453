"""The orchestrator: owns active runs and connected agents, and reconciles the
desired state (runs in the store) with what agents report.

Every change follows one path: take the lock, let the pure core decide
(`core.runs`, `core.scheduler`) on a copy of the run, persist the copy, make it
the run in force, notify watchers, and only then send the resulting actions to
agents. A crash between persisting and sending loses nothing: when an agent
re-registers, its report is compared with the stored runs and missing starts
or teardowns are sent again.

A store write that fails (StoreUnavailable) changes nothing in memory and
sends nothing, so memory never runs ahead of the store; what was pending is
retried, never lost: deadlines, liveness, drains and scheduling are worked out
again by the next reconcile round; a failed write while handling an agent's
message ends that agent's stream, so it reconnects and re-registers with the
state of every container it has, which is reconciled again; API callers get
UNAVAILABLE and retry (creates with their request id).

Time: the wall clock (`clock`) only stamps what people see (events,
timestamps in the API). Heartbeat silence, NotReady/Lost, readiness and run
timeouts are measured on a monotonic clock (`monotonic`), so a wall clock
that jumps (NTP, a VM resumed) neither fails runs nor loses nodes early or
late. Deadlines persisted as wall-clock instants (a run's creation, its
placement, a worker's start) are turned into monotonic instants once, when
they are set or when the control plane loads them after a restart, and the
wall clock is never consulted for them again.
"""

from __future__ import annotations

import asyncio
import logging
import math

from controlplane.services.orchestrator.agents import AgentsPart
from controlplane.services.orchestrator.links import AgentLink, PullOrder, Report
from controlplane.services.orchestrator.round import RoundPart
from controlplane.services.orchestrator.runs import RunsPart
from controlplane.services.orchestrator.settings import REQUEST_TTL, Settings

__all__ = ["REQUEST_TTL", "AgentLink", "Orchestrator", "PullOrder", "Report", "Settings"]

log = logging.getLogger(__name__)


class Orchestrator(RunsPart, AgentsPart, RoundPart):
    """Runs, nodes and agent links, behind one asyncio lock (the parts are
    in this package's modules: runs, agents, nodes, round; what they share in
    state)."""

    async def load(self) -> None:
        """Load active runs and nodes; give every node a fresh grace period,
        since the control plane itself was away."""
        await self.cluster()
        self._ended.clear()
        now, mono = self._clock(), self._mono()
        for node in await self._store.list_nodes():
            node.last_heartbeat = now
            self._put_node(node)
            self._heard[node.name] = mono
        self._runs.clear()
        self._unsaved.clear()  # what this leader kept unstored before is the store's now
        self._ledger.reset(())
        for run in await self._store.active_runs():
            self._set_run(run)
            self._mark(run)  # the only time stored wall-clock instants are read as such
        log.info("event=loaded runs=%d nodes=%d", len(self._runs), len(self._nodes))

    async def run_forever(self) -> None:
        """The reconcile loop: scheduling, deadlines and node liveness."""
        tick, checked = self.settings.tick.total_seconds(), -math.inf
        while True:
            woken = True
            try:
                await asyncio.wait_for(self._wake.wait(), tick)
            except TimeoutError:
                woken = False
            self._wake.clear()
            try:
                if woken and self._mono() - checked < tick:
                    await self.place()  # a burst of wake-ups: deadlines can wait for the tick
                    continue
                checked = self._mono()
                await self.reconcile()
            except Exception:  # keep reconciling; the next tick retries
                log.exception("event=tick_failed")

    async def reconcile(self) -> None:
        """One reconcile round now (the loop runs them; tests call it directly)."""
        async with self._lock:
            await self._tick()

    async def stored(self) -> None:
        """Store what is kept for write-behind now (a graceful stop)."""
        async with self._lock:
            await self.flush()

    async def place(self) -> None:
        """A scheduling round only (what a wake-up asks for): node liveness
        and run deadlines are checked once per tick, not on every wake-up of
        a busy control plane, where each check is a pass over every run."""
        async with self._lock:
            await self._schedule()
