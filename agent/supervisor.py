"""Container lifecycle on one node: start, probe, watch, tear down, report.

The supervisor outlives gRPC streams. It keeps the agent's last reported
:class:`~agent.messages.Status` of every container present on the node, so a
new stream can begin with a complete Register snapshot, and it sends a status
to the current stream (if any) only when something changed. Messages produced
while disconnected are dropped on purpose: the next Register carries the
current truth, which is all the control plane needs to reconcile.

Who may report a container, so that sequences stay ordered:

* while a start is in flight, only the start task (PULLING with progress when
  the image has to be pulled first, CREATING, then RUNNING or EXITED or
  FAILED). Pulls go through :class:`~agent.pulls.Puller` (one pull per image,
  a limit on concurrent pulls, a timeout); a teardown cancels the starts of
  its run that are still pulling, so it never waits for a pull;
* while a run is being torn down, only the teardown task (REMOVED, and only
  for containers that are really gone; a teardown that left some behind is
  retried by the watch loop with backoff). A StartContainer for a run being
  torn down waits until the teardown is over;
* otherwise the watcher (state changes seen by polling ``list_managed``) and
  the probe task (readiness of a running worker).

A poll result that started before such a task touched a container is stale for
that container and ignored, so a slow ``list_managed`` never resurrects a
removed container or reports a just-started one as vanished.

Every status carries the digest of the container's image once it is known
(from the pull or the image before CREATING, from the container afterwards;
for a container adopted after a restart, from one inspect).

Logs (:mod:`agent.logship`): every container that runs or ran is followed
from its first line while a registered stream is attached. A container's
REMOVED is sent only after all of its lines: a teardown
(:mod:`agent.run_teardown`) waits for them before it removes the containers;
a container removed behind the agent's back is reported once its follower has
read what was left (or after a short deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from agent import watch_loop
from agent.adoption import ready_on_arrival, with_digests
from agent.buffer_copies import BufferCopies
from agent.logship import LogShipper, LogSink
from agent.logutil import log
from agent.messages import ImagesAnswer, PullAnswer, PullRequest, Status
from agent.node_requests import answer_images, answer_pull
from agent.pulls import Puller
from agent.readiness import Probes, needs_probe, reachable
from agent.run_teardown import RunTeardowns
from agent.runtime import (
    ContainerInfo,
    ContainerSpec,
    PullProgress,
    Runtime,
    RuntimeFailure,
)
from agent.status_book import Sink, StatusBook, status_of_info, status_of_spec

_log = logging.getLogger(__name__)


class Supervisor:
    """Owns every container of this node on behalf of the control plane.

    ``poll_interval``: watch period; ``probe_interval``: readiness retry period.
    ``log_batch_lines``/``log_batch_seconds`` bound a LogBatch;
    ``log_flush_timeout`` is how long a teardown waits for the logs of the
    stopped containers without any of them going out before removing them
    anyway; ``vanished_log_timeout`` the same for a container removed behind
    the agent's back;
    ``teardown_retry``: the first and the longest pause before a teardown
    that left containers behind is tried again (doubling in between).
    ``puller`` gets images onto the node (default: a :class:`Puller` with
    its defaults). ``copies`` runs the pipes and copies of jobs with buffers
    (default: none can run here).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        poll_interval: float = 0.5,
        probe_interval: float = 0.2,
        log_batch_lines: int = 500,
        log_batch_seconds: float = 0.1,
        log_flush_timeout: float = 15.0,
        vanished_log_timeout: float = 5.0,
        teardown_retry: tuple[float, float] = (1.0, 30.0),
        puller: Puller | None = None,
        copies: BufferCopies | None = None,
    ) -> None:
        """Supervise ``runtime``'s containers (the settings: see the class docstring)."""
        self._rt = runtime
        self.puller = puller or Puller(runtime)
        """Pulls images as start and PullImage messages need them."""
        self.copies = copies or BufferCopies(None)
        """Jobs' FIFOs and the copies between them and their buffers."""
        self._pulling: set[str] = set()
        """Containers whose start is still getting its image."""
        self._poll_interval = poll_interval
        self._vanished_log_timeout = vanished_log_timeout
        self.logs = LogShipper(
            runtime, batch_lines=log_batch_lines, batch_seconds=log_batch_seconds
        )
        """The log shipper (one follower per container for the current stream)."""
        self._book = StatusBook(self.logs.follow)
        """The last status reported for each container present, and who spoke last."""
        self._starts: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._probes = Probes(
            runtime, probe_interval, self._book.get, self._book.record, self._spawn
        )
        """Readiness probes of running workers that are not ready yet."""
        self._ship_logs = False
        self._teardowns = RunTeardowns(
            runtime,
            self._book,
            probes=self._probes,
            copies=self.copies,
            logs=self.logs,
            settle_starts=self._settle_starts,
            ship_logs=lambda: self._ship_logs,
            spawn=self._spawn,
            log_flush_timeout=log_flush_timeout,
            retry=teardown_retry,
        )
        self._deferred_starts: set[str] = set()
        self._vanishing: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reconcile_lock = asyncio.Lock()

    # -- stream attachment ----------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        """Send future status changes to ``sink`` (logs start with :meth:`attach_logs`)."""
        self._book.attach(sink)

    def attach_logs(self, logs: LogSink) -> None:
        """Ship log batches to ``logs``: every container that runs or ran, from its first line.

        The control plane drops lines it already has.
        """
        self._ship_logs = True
        self.logs.attach(logs)
        for status in self._book:
            self.logs.follow(status)

    def detach(self) -> None:
        """Stop sending (the stream ended); changes keep being tracked."""
        self._book.attach(None)
        self.logs.detach()

    def join_cluster(self, cluster_id: str) -> None:
        """Registered named the node's cluster: from now on manage only its
        containers and those without a cluster label. Any other cluster's
        container is forgotten without a word (no status, no logs) and left
        alone. "" (a control plane that does not say) changes nothing."""
        scope = self._rt.cluster
        if not cluster_id or cluster_id == scope.cluster_id:
            return
        scope.cluster_id = cluster_id
        for status in self._book:
            if not scope.admits(status.name, status.cluster_id):
                self._forget(status.name)
                self.logs.forget(status.name)

    def snapshot(self) -> list[Status]:
        """Current status of every container present, for Register."""
        return self._book.snapshot()

    # -- commands from the control plane ----------------------------------------------

    def handle_start(self, spec: ContainerSpec) -> None:
        """Start a replica in the background (idempotent by container name)."""
        if spec.name in self._starts:
            log(_log, logging.DEBUG, "start_in_progress", name=spec.name)
            return
        teardown = self._teardowns.running(spec.run_id)
        if teardown is not None:
            # The latest command wins: start once the teardown is over. The
            # deferred start is not in ``_starts``, so the teardown never waits for it.
            if spec.name not in self._deferred_starts:
                log(_log, logging.INFO, "start_deferred_until_teardown_ends", name=spec.name)
                self._deferred_starts.add(spec.name)
                self._spawn(self._start_after(teardown, spec), f"deferred {spec.name}")
            return
        task = self._spawn(self._start(spec), f"start {spec.name}")
        self._starts[spec.name] = (spec.run_id, task)
        task.add_done_callback(lambda _t: self._starts.pop(spec.name, None))

    async def _start_after(self, teardown: asyncio.Task[None], spec: ContainerSpec) -> None:
        try:
            await asyncio.wait({teardown})
        finally:
            self._deferred_starts.discard(spec.name)
        self.handle_start(spec)

    def handle_teardown(self, run_id: int, *, keep_logs: bool = True) -> None:
        """Remove every container of ``run_id`` in the background (idempotent).

        ``keep_logs=False`` does not wait for the logs to be shipped first
        (self-fencing: no stream can take them)."""
        self._teardowns.start(run_id, keep_logs=keep_logs)

    def handle_pull_image(self, request: PullRequest, reply: Callable[[PullAnswer], None]) -> None:
        """Pull ``request.image`` in the background; answer through ``reply``."""

        async def pull() -> None:
            reply(await answer_pull(self.puller, self._rt.node_name, request))

        self._spawn(pull(), f"pull-image {request.request_id}")

    def handle_list_images(self, request_id: str, reply: Callable[[ImagesAnswer], None]) -> None:
        """List the node's images in the background; answer through ``reply``."""

        async def list_images() -> None:
            reply(await answer_images(self._rt, request_id))

        self._spawn(list_images(), f"list-images {request_id}")

    # -- watching -----------------------------------------------------------------------

    async def watch(self) -> None:
        """List the runtime's containers and report every state change: at
        once when the runtime announces a change, and every poll interval
        anyway (announcements can be missed); retry due teardowns after each."""
        await watch_loop.watch(
            self._rt, self.reconcile, self._teardowns.retry_due, self._poll_interval
        )

    def state_counts(self) -> dict[str, int]:
        """Managed containers by state, as last observed (metrics)."""
        return self._book.state_counts()

    async def reconcile(self) -> None:
        """List the node's containers once and report what changed since last time."""
        async with self._reconcile_lock:
            started_at = self._book.tick()
            infos = await self._rt.list_managed()
            infos = await with_digests(self._rt, infos, self._unknown_and_idle)
            ready = await ready_on_arrival(self._rt, infos, self._unknown)
            self._apply(infos, started_at, ready)

    def _unknown(self, name: str) -> bool:
        return name not in self._book

    def _unknown_and_idle(self, name: str) -> bool:
        return name not in self._book and name not in self._starts

    def _apply(self, infos: list[ContainerInfo], started_at: int, ready: set[str]) -> None:
        seen: set[str] = set()
        for info in infos:
            seen.add(info.name)
            if self._owned_elsewhere(info.name, info.run_id, started_at):
                continue
            prev = self._book.get(info.name)
            if prev is not None and prev.state == info.state and prev.exit_code == info.exit_code:
                continue
            if prev is None:
                log(_log, logging.INFO, "container_adopted", name=info.name, state=info.state)
            self._track(info, ready=info.name in ready)
        for prev in self._book:
            name = prev.name
            if name in seen or self._owned_elsewhere(name, prev.run_id, started_at):
                continue
            self._forget(name)
            self._report_vanished(
                replace(
                    prev,
                    state="removed",
                    ready=False,
                    endpoints=(),
                    message="container was removed outside the agent",
                )
            )

    def _report_vanished(self, status: Status) -> None:
        """Send REMOVED once the follower has shipped what it could still read."""
        name = status.name
        if name in self._vanishing:
            return

        async def report() -> None:
            await self.copies.remove(name)
            if self._ship_logs and not await self.logs.flush([name], self._vanished_log_timeout):
                log(_log, logging.WARNING, "log_flush_timeout", name=name)
            self.logs.forget(name)
            self._book.send(status)

        task = self._spawn(report(), f"vanished {name}")
        self._vanishing[name] = task
        task.add_done_callback(lambda _t: self._vanishing.pop(name, None))

    def _owned_elsewhere(self, name: str, run_id: int, started_at: int) -> bool:
        """Whether a start/teardown owns ``name`` or touched it after the poll began."""
        return (
            name in self._starts
            or run_id in self._teardowns
            or self._book.touched_since(name, started_at)
        )

    # -- start and readiness --------------------------------------------------------------

    async def _start(self, spec: ContainerSpec) -> None:
        vanishing = self._vanishing.get(spec.name)
        if vanishing is not None:  # its REMOVED goes first
            await asyncio.wait({vanishing})
        current = self._book.get(spec.name)
        if current is not None and current.state not in ("creating", "pulling"):
            # Already known: the control plane may have missed our last word.
            self._book.send(current)
            if current.state == "running" and not current.ready:
                self._probes.ensure(spec.name)
            return
        base = status_of_spec(spec, "creating")
        prior = await self._existing(spec.name)
        if prior is None:
            # Only a container that is not there yet needs its image.
            self._pulling.add(spec.name)
            try:
                outcome = await self.puller.ensure(
                    spec.image,
                    spec.pull_policy,
                    spec.registry_credentials,
                    lambda p: self._pull_progress(base, p),
                )
            except RuntimeFailure as exc:
                self._fail(spec, str(exc))
                return
            except Exception as exc:  # any runtime/transport error: report, never crash
                self._fail(spec, f"{type(exc).__name__}: {exc}")
                return
            finally:
                self._pulling.discard(spec.name)
            base = replace(base, image_digest=outcome.digest)
        self._book.record(base)
        # Copies start only with a container that never ran: one that did has lost them.
        fresh = prior is None or prior.state == "creating"
        log(_log, logging.INFO, "start_container", name=spec.name, image=spec.image)
        try:
            if spec.buffers:
                spec = await self.copies.prepare(spec, fresh=fresh)
            info = await self._rt.start(spec)
        except Exception as exc:  # any runtime/transport error: report, never crash
            if fresh:
                await self.copies.remove(spec.name)
            self._fail(spec, str(exc) if isinstance(exc, RuntimeFailure | OSError) else
                       f"{type(exc).__name__}: {exc}")  # fmt: skip
            return
        if fresh:
            self.copies.start(spec, self._buffer_failed)
        self._book.touch(spec.name)
        self._track(info, ready=False)

    async def _existing(self, name: str) -> ContainerInfo | None:
        """The container ``name`` if it exists already (its start adopts it, image or not)."""
        try:
            return await self._rt.inspect(name)
        except Exception:  # the start itself will tell
            return None

    def _pull_progress(self, base: Status, progress: PullProgress) -> None:
        """Report PULLING with ``progress`` while the start still waits for its image."""
        if base.name in self._pulling:
            self._book.record(
                replace(
                    base,
                    state="pulling",
                    pull_bytes_done=progress.bytes_done,
                    pull_bytes_total=progress.bytes_total,
                )
            )

    def _fail(self, spec: ContainerSpec, message: str) -> None:
        log(_log, logging.WARNING, "start_failed", name=spec.name, error=message)
        self._book.touch(spec.name)
        self._forget(spec.name)
        self._book.send(replace(status_of_spec(spec, "failed"), message=message))

    def _track(self, info: ContainerInfo, *, ready: bool) -> None:
        """Record and report ``info`` as the container's new state."""
        base = status_of_info(
            info,
            self._book.get(info.name),
            self.copies.error_of(info.name) if info.role == "job" else "",
        )
        code = info.exit_code if info.state == "exited" and info.exit_code is not None else -1
        if info.state in ("exited", "failed") and self.copies.job_exited(
            info.name, code, lambda: self._copies_ended(info)
        ):
            return  # reported once the copies have ended
        if info.state == "running":
            if not needs_probe(info):
                self._book.record(replace(base, ready=True))
            elif ready:
                targets = self._rt.endpoint_targets(info)
                self._book.record(replace(base, ready=True, **reachable(targets)))
            else:
                self._book.record(base)
                self._probes.ensure(info.name)
            return
        self._probes.stop(info.name)
        if info.state == "exited":
            self._book.record(replace(base, exit_code=info.exit_code))
        elif info.state == "failed":
            self._book.record(
                replace(base, message=info.message or "container is in an unexpected state")
            )
        else:
            self._book.record(base)

    def _copies_ended(self, info: ContainerInfo) -> None:
        """The job's copies ended after it exited: report the exit, with their outcome."""
        status = self._book.get(info.name)
        if status is None or info.run_id in self._teardowns:
            return  # removed or being torn down meanwhile: that report wins
        self._book.touch(info.name)
        self._track(info, ready=False)

    def _buffer_failed(self, name: str) -> None:
        """A copy failed while the job runs: tell the control plane at once."""
        status = self._book.get(name)
        if status is None or name in self._starts or status.run_id in self._teardowns:
            return  # the start or the teardown reports
        self._book.record(replace(status, buffer_error=self.copies.error_of(name)))

    # -- teardown ---------------------------------------------------------------------------

    def fence(self) -> list[int]:
        """Cut off from the control plane for longer than it keeps a silent
        node: stop and remove every container of every run here (their runs
        have failed as the node was Lost), without waiting for their logs."""
        # Until Registered named the cluster, a labelled container may be another
        # cluster's: only unlabelled ones are fenced then.
        known = bool(self._rt.cluster.cluster_id)
        mine = {s.run_id for s in self._book if known or not s.cluster_id}
        runs = sorted(mine | set(self._starts_by_run()))
        for run_id in runs:
            self.handle_teardown(run_id, keep_logs=False)
        return runs

    def _starts_by_run(self) -> set[int]:
        return {run_id for run_id, _ in self._starts.values()}

    async def _settle_starts(self, run_id: int) -> None:
        """A start already in flight finishes first, so nothing is created after
        removal; one still getting its image is cancelled (it created nothing)."""
        pending = [(name, task) for name, (rid, task) in self._starts.items() if rid == run_id]
        for name, task in pending:
            if name in self._pulling:
                task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)

    def _forget(self, name: str) -> None:
        self._probes.stop(name)
        self._book.forget(name)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log(_log, logging.ERROR, "task_crashed", task=task.get_name(), error=task.exception())

    async def close(self) -> None:
        """Cancel every background task and log follower (containers keep running)."""
        self.detach()
        await self.copies.close()
        await self.logs.close()
        await self.puller.close()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
