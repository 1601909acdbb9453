"""The orchestrator's run use cases: create (admitted, idempotent by request
id), read (from memory while active or recently ended), cancel, tags, watch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from controlplane.core import runs as lifecycle
from controlplane.core.admission import admit
from controlplane.core.errors import (
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
)
from controlplane.core.runs import Action, Run
from controlplane.core.tyger import etag_of, validate_fields
from controlplane.services.orchestrator.settings import REQUEST_TTL
from controlplane.services.orchestrator.state import OrchestratorState
from controlplane.services.run_requests import (
    RunRequest,
    check_same_request,
    fingerprint,
    resolve_target,
    timeout_of,
    validate_tags,
)

log = logging.getLogger(__name__)


class RunsPart(OrchestratorState):
    """Creating, reading, canceling, tagging and watching runs."""

    async def create_run(self, request: RunRequest) -> Run:
        """Resolve, admit, bind the job's buffers, persist as Pending, then
        let the loop place it.

        A request id seen in the last 24 h returns the run it created (as it
        is now) instead: the id is stored with the run, in one transaction, so
        a client that retries after a lost reply never doubles a run. Buffers
        are bound before the lock is taken (they need the store and the data
        plane) and after every other check, so a refused request makes none;
        buffers made for a run that is then not stored are discarded."""
        validate_tags(request.tags)
        validate_tags(request.tyger.job_tags, "job.tags")
        validate_fields(request.tyger)
        timeout = timeout_of(request)
        job = await resolve_target(self._codespecs, request.job, "job")
        worker = (
            await resolve_target(self._codespecs, request.worker, "worker")
            if request.worker
            else None
        )
        cluster = await self.cluster()
        if (known := await self._repeated(request)) is not None:
            return known
        self._check_pending()
        admit(job, worker, self._admission_nodes())
        bound = await self.run_buffers.bind(job, request.buffers, request.tyger)
        made = [i for name, i in bound.items() if request.buffers.get(name) != i]
        stored = False
        try:
            async with self._lock:
                if (known := await self._repeated(request)) is not None:
                    await self.run_buffers.discard(made)  # a concurrent twin won
                    return known
                self._check_pending()
                admit(job, worker, self._admission_nodes())
                policy = request.pull_policy or self.settings.default_pull_policy
                run = lifecycle.new_run(
                    0, job, worker, self._clock(), timeout, request.tags, policy, cluster
                )
                run.tyger, run.buffers = request.tyger, bound
                run = await self._store.insert_run(
                    run, request.request_id, fingerprint(request) if request.request_id else ""
                )
                stored = True
                self._set_run(run)
                self._mark(run)
                self._notify(run.id)
        except BaseException:
            if not stored:  # nothing points at them
                await self.run_buffers.discard(made)
            raise
        log.info("event=run_created run=%d workers=%d", run.id, len(run.workers))
        self.wake()
        return run

    async def _repeated(self, request: RunRequest) -> Run | None:
        """The run this request id created in the last 24 h, as it is now."""
        if not request.request_id:
            return None
        known = await self._store.run_for_request(request.request_id, self._clock() - REQUEST_TTL)
        if known is None:
            return None
        check_same_request(request, known.fingerprint, known.run_id)
        log.info("event=run_create_repeated run=%d", known.run_id)
        return await self.get_run(known.run_id)

    def _check_pending(self) -> None:
        """Refuse a run beyond --max-pending-runs, saying what to do."""
        limit = self.settings.max_pending_runs
        if not limit:
            return
        pending = sum(1 for r in self._runs.values() if r.status == "Pending")
        if pending >= limit:
            raise ResourceExhausted(
                f"{pending} runs are already Pending, the limit (--max-pending-runs {limit}); "
                "wait for some to start, cancel some (`muster run list --status Pending`), or "
                "restart the control plane with a higher --max-pending-runs"
            )

    async def get_run(self, run_id: int) -> Run:
        """The stored run, or NotFound. Active and recently ended runs come
        from memory: the run in force is always the one stored (it is
        replaced only after a write), and only this control plane writes runs."""
        run = (
            self._runs.get(run_id)
            or self._recently_ended(run_id)
            or await self._store.get_run(run_id)
        )
        if run is None:
            raise NotFound(f"The run '{run_id}' was not found.")
        return run

    async def cancel_run(self, run_id: int) -> Run:
        """Canceled at once; containers are torn down right after."""
        async with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                stored = await self.get_run(run_id)
                raise FailedPrecondition(
                    f"run {run_id} has already finished ({stored.status}); "
                    "only Pending or Running runs can be canceled"
                )
            run = await self._change(run, lambda draft: lifecycle.cancel(draft, self._clock()))
        self.wake()
        return run

    async def update_run_tags(
        self, run_id: int, tags: dict[str, str], clear: bool, etag: str
    ) -> Run:
        """Tyger's `run set`: add (or, with `clear`, replace) a run's tags,
        only if its ETag is still `etag` when one is given. Finished runs too."""
        async with self._lock:
            run = self._runs.get(run_id) or await self.get_run(run_id)
            if etag and etag != etag_of(run):
                raise FailedPrecondition(
                    f"run {run_id} changed since it was read (its eTag is now "
                    f"{etag_of(run)}); read it again and retry"
                )
            merged = dict(tags) if clear else {**run.tags, **tags}
            validate_tags(merged)

            def retag(draft: Run) -> list[Action]:
                draft.tags = merged
                return []

            if run_id in self._runs:
                return await self._change(run, retag, always=True)
            draft = lifecycle.clone(run)
            retag(draft)
            await self._store.save_run(draft)
            if run_id in self._ended:
                self._remember_ended(draft)
            self._notify(run_id)
            return draft

    async def watch(self, run_id: int) -> AsyncIterator[Run]:
        """The run now and after every change, ending with its terminal state.

        The change event is taken before the run is read, so a change that
        lands between reading and waiting is never missed (changes that land
        together are seen as one). However a watch ends (the run's end, an
        unknown run, the caller gone), it leaves nothing behind."""
        self._watching[run_id] = self._watching.get(run_id, 0) + 1
        try:
            while True:
                changed = self._changes.setdefault(run_id, asyncio.Event())
                run = await self.get_run(run_id)
                yield run
                if run.terminal:
                    return
                await changed.wait()
        finally:
            left = self._watching.pop(run_id) - 1
            if left:
                self._watching[run_id] = left
            else:
                self._changes.pop(run_id, None)
