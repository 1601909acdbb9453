"""The reconcile round: node liveness, drains, run deadlines and placement,
each stored as one batch before anything is sent."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from controlplane.core import runs as lifecycle
from controlplane.core.gpus import (
    GpuShortage,
    assign_devices,
    needs_of,
)
from controlplane.core.runs import Action, Run
from controlplane.core.scheduler import Demand, PendingRun, schedule
from controlplane.services.batch import RunBatch
from controlplane.services.orchestrator.links import new_generation
from controlplane.services.orchestrator.nodes import NodesPart
from controlplane.services.orchestrator.settings import RESCHEDULE_EVERY

log = logging.getLogger(__name__)


class RoundPart(NodesPart):
    """One reconcile round: liveness, drains, deadlines, then placement."""

    async def _tick(self) -> None:
        now = self._clock()
        await self._check_nodes(now)
        await self._check_drains(now)
        timeout, batch = self.settings.readiness_timeout, RunBatch()
        for run in list(self._runs.values()):
            elapsed = self._elapsed(run)
            batch.change(
                run,
                partial(
                    lifecycle.check_deadlines, now=now, readiness_timeout=timeout, elapsed=elapsed
                ),
            )
        await self._commit(batch)
        await self._schedule()
        await self.flush()  # the tick's observations, kept for write-behind: one write

    def _demand(self, run: Run) -> PendingRun:
        """What the scheduler sees of a pending run: its workers, then its job,
        and how long it has waited (on the monotonic clock)."""
        parts = []
        if run.worker is not None:
            worker = run.worker
            parts.append(Demand("worker", worker.node_pool, worker.replicas, worker.request))
        parts.append(Demand("job", run.job.node_pool, run.job.replicas, run.job.request))
        return PendingRun(run.id, run.created_at, tuple(parts), self._elapsed(run)("created"))

    async def _schedule(self) -> None:
        """Place what fits. Placement only changes when something changed, so
        rounds run on wake-ups, plus a periodic one for anti-starvation aging."""
        mono = self._mono()
        periodic = (
            self._last_schedule is None
            or mono - self._last_schedule >= RESCHEDULE_EVERY.total_seconds()
        )
        if not (self._schedule_due or periodic):
            return
        self._schedule_due, self._last_schedule = False, mono
        pending = [r for r in self._runs.values() if not r.placed]
        if not pending:
            return
        now = self._clock()
        demands = [self._demand(run) for run in pending]
        # Pure CPU work on immutable views: off the event loop, so streams keep flowing.
        decision = await asyncio.to_thread(
            schedule, self._views(), demands, now, self.settings.starvation_after
        )
        in_use = self.gpus_in_use()
        node_devices = {n.name: n.gpu_devices for n in self._nodes.values()}
        batch = RunBatch()
        for run_id, assignment in decision.placements.items():
            run = self._runs[run_id]
            try:  # each replica gets GPU devices of its own, stored before any start
                gpus = assign_devices(assignment, needs_of(run), node_devices, in_use)
            except GpuShortage as exc:
                decision.waiting[run_id] = f"waiting for free GPU devices on {exc}"
                continue
            for key, chosen in gpus.items():
                in_use.setdefault(assignment[key], set()).update(chosen)
            generation = new_generation()

            place = partial(
                lifecycle.place,
                assignment=assignment,
                now=now,
                generation=generation,
                gpu_devices=gpus,
            )
            run = batch.change(run, place, always=True)
            log.info("event=run_placed run=%d nodes=%s", run_id, ",".join(run.nodes()))
        for run_id, reason in decision.waiting.items():
            run = self._runs[run_id]
            if run.status_reason != reason:

                def wait(d: Run, why: str = reason) -> list[Action]:
                    lifecycle.waiting(d, why)
                    return []

                batch.change(run, wait, always=True)
        await self._commit(batch)
