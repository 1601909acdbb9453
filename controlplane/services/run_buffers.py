"""Buffers in runs, the use cases: bind a job's buffer parameters when a run
is created, sign the URLs its container copies with, and leave the outputs
of a run that failed or was canceled marked failed.

Binding happens before the run is stored, outside the orchestrator's lock
(it reads and writes buffer records and asks the data plane for
containers). Whatever fails after buffers were made (the run's insert, a
concurrent retry of the same request id that won) leaves at worst buffers
no run points at: they carry `bufferName` and the run's tags and expire
with job.bufferTtl, and this service soft-deletes them when it still can.
A run is never stored pointing at a buffer that was not made.

Marking runs beside the reconcile loop: the orchestrator hands over each run
it has just committed as ended (`run_ended`, which only queues), and a task
of its own calls the data plane, retrying with back-off while it fails.
The queue lives in memory: a control plane that stops before the marks are
written does not write them after a restart (docs/buffers.md).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from controlplane.core import buffers as records
from controlplane.core import run_buffers as core
from controlplane.core.errors import FailedPrecondition, NotFound
from controlplane.core.runs import Run, Target
from controlplane.core.tyger import TygerFields
from controlplane.services.buffers import BufferService, DataPlaneUnavailable, Selection

log = logging.getLogger(__name__)

NO_DATA_PLANE = (
    "the job declares buffers, but this control plane runs without a data plane "
    "(--data-listen off), so no run can use buffers; start it with a data plane"
)
RETRY_FIRST = timedelta(seconds=1)
RETRY_MOST = timedelta(seconds=60)


class RunBuffers:
    """The buffers of runs, over the BufferService (None: no data plane)."""

    def __init__(self, buffers: BufferService | None, ca_pem: str = "") -> None:
        self._buffers = buffers
        self._ca_pem = ca_pem
        """PEM of the CA the data plane's TLS certificate chains to ("" with --insecure)."""
        self._to_mark: dict[str, int] = {}  # output buffer id -> run id, in arrival order
        self._wake = asyncio.Event()

    @property
    def _storage_ready(self) -> bool:
        return self._buffers is not None and self._buffers.storage is not None

    # -- creation --------------------------------------------------------------

    async def bind(
        self, job: Target, bindings: dict[str, str], fields: TygerFields
    ) -> dict[str, str]:
        """Every buffer parameter of the job -> a buffer id: the one the
        user bound (which must exist and be active), else a new buffer.
        Every check comes before the first buffer is made."""
        params = core.check_bindings(job.codespec, bindings, job.replicas)
        if not params:
            return {}
        if not self._storage_ready:
            raise FailedPrecondition(NO_DATA_PLANE)
        assert self._buffers is not None
        ttl = core.new_buffer_ttl_seconds(fields)
        records.lifetime(ttl, "job.bufferTtl")
        records.validate_tags(core.new_buffer_tags(params[0].name, fields), "job.tags")
        for buffer_id in bindings.values():
            await self._existing(buffer_id)
        made: dict[str, str] = {}
        try:
            for p in params:
                if p.name not in bindings:
                    tags = core.new_buffer_tags(p.name, fields)
                    made[p.name] = (await self._buffers.create(tags, ttl)).id
        except BaseException:
            await self.discard(list(made.values()))
            raise
        log.info("event=run_buffers_bound bound=%d made=%d", len(bindings), len(made))
        return {p.name: bindings.get(p.name) or made[p.name] for p in params}

    async def _existing(self, buffer_id: str) -> None:
        """An active buffer, or NotFound with Tyger's message."""
        assert self._buffers is not None
        try:
            await self._buffers.get(buffer_id)
        except NotFound:
            raise NotFound(f"The buffer '{records.shown(buffer_id)}' was not found") from None

    async def discard(self, buffer_ids: list[str]) -> None:
        """Soft-delete buffers made for a run that was not stored (expiring
        now, so the deleter purges them); best effort: on failure they stay,
        tagged, until their TTL."""
        if not buffer_ids or self._buffers is None:
            return
        try:
            await self._buffers.delete(Selection(ids=buffer_ids), ttl_seconds=0)
        except Exception as exc:  # the store or data plane is failing; the TTL remains
            log.warning("event=run_buffers_orphaned ids=%s error=%r", ",".join(buffer_ids), exc)

    # -- the job's container ---------------------------------------------------

    def pipes(self, run: Run) -> tuple[core.Pipe, ...]:
        """The job's pipes with signed URLs (inputs read-only, outputs
        writable), valid until the run's timeout plus an hour; the agent
        cannot ask for fresh ones yet. Raises when there is no data plane."""
        params = core.parameters(run.job.codespec)
        if not params:
            return ()
        if self._buffers is None:
            raise DataPlaneUnavailable(NO_DATA_PLANE)
        expires_at = core.url_expiry(run.created_at, run.timeout_seconds)
        return tuple(
            core.Pipe(
                p.name,
                p.output,
                run.buffers[p.name],
                self._buffers.run_url(
                    run.buffers[p.name], writable=p.output, expires_at=expires_at
                ),
                self._ca_pem,
            )
            for p in params
        )

    # -- the end of a run ------------------------------------------------------

    def run_ended(self, run: Run) -> None:
        """Queue the failed markers of a run just committed as ended (never
        blocks, never fails: the caller is the reconcile loop)."""
        ids = core.outputs_to_fail(run.status, run.job.codespec, run.buffers)
        if not ids:
            return
        if not self._storage_ready:
            log.warning("event=outputs_not_marked run=%d reason=no_data_plane", run.id)
            return
        for buffer_id in ids:
            self._to_mark[buffer_id] = run.id
        self._wake.set()

    @property
    def pending(self) -> list[str]:
        """Output buffers still to be marked failed."""
        return list(self._to_mark)

    async def mark_pending(self) -> int:
        """Write the failed marker of every queued buffer (create-only: a
        buffer already complete stays complete); returns how many are left."""
        storage = self._buffers.storage if self._buffers is not None else None
        if storage is None:
            return len(self._to_mark)
        for buffer_id, run_id in list(self._to_mark.items()):
            try:
                await storage.mark_failed(buffer_id)
            except Exception as exc:
                log.warning(
                    "event=output_mark_failed run=%d id=%s error=%r", run_id, buffer_id, exc
                )
                continue
            del self._to_mark[buffer_id]
            log.info("event=output_marked_failed run=%d id=%s", run_id, buffer_id)
        return len(self._to_mark)

    async def run_forever(
        self, first: timedelta = RETRY_FIRST, most: timedelta = RETRY_MOST
    ) -> None:
        """Mark what is queued as it comes; while the data plane fails, retry
        after `first`, doubling up to `most` (a new ending retries at once)."""
        delay, wait = first, None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                left = await self.mark_pending()
            except Exception:
                log.exception("event=output_marking_failed")
                left = len(self._to_mark)
            if left:
                wait, delay = delay.total_seconds(), min(delay * 2, most)
            else:
                wait, delay = None, first
