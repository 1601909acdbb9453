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
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from controlplane.core import nodes as maintenance
from controlplane.core import runs as sm
from controlplane.core.admission import Offers, admit, summarize
from controlplane.core.capacity import Capacity
from controlplane.core.containers import ContainerSpec, container_spec
from controlplane.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from controlplane.core.gpus import (
    GpuShortage,
    allocated_gpus,
    assign_devices,
    devices_in_use,
    needs_of,
)
from controlplane.core.images import DEFAULT_PULL_POLICY, Credential, PullPolicy
from controlplane.core.nodes import Liveness, Node
from controlplane.core.runs import Action, Observation, Run, StartReplica, Teardown
from controlplane.core.scheduler import Demand, NodeView, PendingRun, schedule
from controlplane.core.tyger import etag_of, validate_fields
from controlplane.services.batch import Change, Coalescer, RunBatch
from controlplane.services.codespecs import CodespecService, utcnow
from controlplane.services.requests import (
    RunRequest,
    check_same_request,
    fingerprint,
    resolve_target,
    timeout_of,
    validate_tags,
)
from controlplane.services.run_buffers import RunBuffers
from controlplane.store.base import Store

log = logging.getLogger(__name__)


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def new_generation() -> int:
    """A placement generation: random, so that it also tells this database's
    placements from those of any other that reused the same run ids."""
    return secrets.randbits(62) + 1


RESCHEDULE_EVERY = timedelta(seconds=5)
REQUEST_TTL = timedelta(hours=24)
ENDED_KEPT = 2000
"""Recently ended runs kept in memory for the reports that follow their end."""
"""How long a CreateRun request id is remembered (a retry within it returns the same run)."""


class AgentLink(Protocol):
    """The orchestrator's handle on one connected agent (the gRPC adapter implements it)."""

    def start(self, spec: ContainerSpec) -> None:
        """Queue a container start (the agent makes it idempotent)."""

    def teardown(self, run_id: int) -> None:
        """Queue the removal of every container of a run on that node."""

    def close(self) -> None:
        """End the link's stream (a newer connection of the same node replaced it)."""

    def pull_image(self, order: PullOrder) -> None:
        """Queue a PullImage (muster image pull); the answer comes back by request id."""

    def list_images(self, request_id: str) -> None:
        """Queue a ListImages; the answer comes back by request id."""


@dataclass(frozen=True)
class PullOrder:
    """Pull an image onto one node, outside any run."""

    request_id: str
    image: str
    policy: PullPolicy
    credentials: tuple[Credential, ...] = ()


@dataclass(frozen=True)
class Report:
    """An agent's report about one container, in domain terms."""

    run_id: int
    observation: Observation


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


class Orchestrator:
    """Runs, nodes and agent links, behind one asyncio lock."""

    def __init__(
        self,
        store: Store,
        codespecs: CodespecService,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = utcnow,
        credentials: Callable[[], Mapping[str, Credential]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        run_buffers: RunBuffers | None = None,
    ) -> None:
        self._store = store
        self.run_buffers = run_buffers or RunBuffers(None)
        """Binds jobs' buffers, signs their URLs, marks outputs of bad endings
        (without one: no data plane, so jobs with buffers are refused)."""
        self._codespecs = codespecs
        self.settings = settings or Settings()
        self._clock = clock
        self._mono = monotonic
        self._credentials = credentials or dict
        self._lock = asyncio.Lock()
        self._runs: dict[int, Run] = {}
        self._nodes: dict[str, Node] = {}
        self._links: dict[str, AgentLink] = {}
        self._wake = asyncio.Event()
        self._schedule_due = True
        self._last_schedule: float | None = None  # monotonic
        self._changes: dict[int, asyncio.Event] = {}  # run id -> set on its next change
        self._watching: dict[int, int] = {}  # run id -> watches in progress
        self._heard: dict[str, float] = {}  # node -> monotonic time of its last heartbeat
        self._marks: dict[int, dict[str, float]] = {}  # run id -> anchor -> monotonic instant
        # node -> (its drain deadline, the monotonic instant it falls due)
        self._drain_due: dict[str, tuple[datetime, float]] = {}
        self._admission_views: Offers | None = None
        self._listeners: list[Callable[[Run | None, Run], None]] = []
        self._reports: Coalescer[tuple[str, Report]] = Coalescer(self._handle_reports)
        # Runs this control plane saw end, newest last (reports of their
        # containers' ends keep arriving after the run ended).
        self._ended: OrderedDict[int, Run] = OrderedDict()
        self.cluster_id = ""
        """The database's cluster id (read at load): in container names and labels."""

    # -- lifecycle ---------------------------------------------------------

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
        for run in await self._store.active_runs():
            self._runs[run.id] = run
            self._mark(run)  # the only time stored wall-clock instants are read as such
        log.info("event=loaded runs=%d nodes=%d", len(self._runs), len(self._nodes))

    async def cluster(self) -> str:
        """The cluster id, read from the store once."""
        if not self.cluster_id:
            self.cluster_id = await self._store.cluster_id()
        return self.cluster_id

    async def run_forever(self) -> None:
        """The reconcile loop: scheduling, deadlines and node liveness."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.tick.total_seconds())
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                async with self._lock:
                    await self._tick()
            except Exception:  # keep reconciling; the next tick retries
                log.exception("event=tick_failed")

    def wake(self) -> None:
        """Ask for a reconcile round now, with scheduling: something changed
        that may let a pending run fit (a new run, freed capacity, a node)."""
        self._schedule_due = True
        self._wake.set()

    # -- runs --------------------------------------------------------------

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
                run = sm.new_run(
                    0, job, worker, self._clock(), timeout, request.tags, policy, cluster
                )
                run.tyger, run.buffers = request.tyger, bound
                run = await self._store.insert_run(
                    run, request.request_id, fingerprint(request) if request.request_id else ""
                )
                stored = True
                self._runs[run.id] = run
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
            run = await self._change(run, lambda draft: sm.cancel(draft, self._clock()))
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
            draft = sm.clone(run)
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

    def watch_state(self) -> tuple[int, int]:
        """(runs with a pending change event, watches in progress): what watches hold."""
        return len(self._changes), sum(self._watching.values())

    def _notify(self, run_id: int) -> None:
        """Wake the run's watchers (and forget the event: no growth per run)."""
        event = self._changes.pop(run_id, None)
        if event is not None:
            event.set()

    async def _change(
        self, run: Run, decide: Callable[[Run], list[Action]], always: bool = False
    ) -> Run:
        """Let `decide` change a copy of `run` and return the actions that
        follow; commit the copy when there are actions, when the run ended, or
        `always` (decisions that change a run without actions). Returns the
        run in force afterwards."""
        batch = RunBatch()
        after = batch.change(run, decide, always)
        await self._commit(batch)
        return after

    async def _commit(self, batch: Iterable[Change]) -> None:
        """Persist every run the batch changed (copies the state machine
        changed) in one transaction first; only then make them the runs in
        force, tell watchers and act. A failed write raises and leaves memory
        as it was, with nothing sent."""
        changes = list(batch)
        if not changes:
            return
        await self._store.save_runs([change.after for change in changes])
        for change in changes:
            self._in_force(change)
        for change in changes:
            run = change.after
            failures = [e for action in change.actions if (e := self._dispatch(run, action))]
            if failures and not run.terminal:
                await self._change(run, partial(sm.fail, now=self._clock(), reason=failures[0]))

    def _in_force(self, change: Change) -> None:
        """The run a change made (just stored) replaces the run in memory; its
        watchers wake."""
        run = change.after
        for listener in self._listeners:
            listener(change.before, run)
        if run.terminal:
            self._remember_ended(run)
            if self._runs.pop(run.id, None) is not None:  # it has just ended
                self.run_buffers.run_ended(run)
                self._marks.pop(run.id, None)
                self.wake()
        elif run.id in self._runs:
            self._runs[run.id] = run
            self._mark(run)
        self._notify(run.id)

    def _mark(self, run: Run) -> None:
        """Take the monotonic instant of every deadline anchor of `run` not
        marked yet (its creation, placement, each worker's start), from its
        stored wall-clock value: once, as it is set (so it is about now) or as
        the run is loaded after a restart; never again."""
        marks = self._marks.setdefault(run.id, {})
        fresh = {k: v for k, v in sm.anchors(run).items() if k not in marks}
        if not fresh:
            return
        now, mono = self._clock(), self._mono()
        for name, at in fresh.items():
            marks[name] = mono - max(0.0, (now - at).total_seconds())

    def _elapsed(self, run: Run) -> sm.Elapsed:
        """Monotonic time since each of the run's anchors."""
        self._mark(run)  # a no-op: every commit marks what it set
        marks, mono = self._marks.get(run.id, {}), self._mono()

        def since(anchor: str) -> timedelta:
            return timedelta(seconds=max(0.0, mono - marks.get(anchor, mono)))

        return since

    def _dispatch(self, run: Run, action: Action) -> str | None:
        """Send one action; returns why it could not be sent (a bug, never bad input)."""
        link = self._links.get(action.node)
        if link is None:
            log.info("event=action_deferred node=%s run=%d", action.node, run.id)
            return None  # sent again when the agent re-registers
        try:
            if isinstance(action, StartReplica):
                link.start(
                    container_spec(
                        run,
                        action.role,
                        action.index,
                        self._node_ips(),
                        self.settings.default_pull_policy,
                        self._credentials(),
                        self.cluster_id,
                        self.run_buffers.pipes(run) if action.role == "job" else (),
                    )
                )
            elif isinstance(action, Teardown):
                link.teardown(action.run_id)
        except Exception as exc:
            log.exception("event=dispatch_failed node=%s run=%d", action.node, run.id)
            return f"could not send {action} to {action.node}: {exc}"
        return None

    # -- agents ------------------------------------------------------------

    async def connect(self, node: Node, link: AgentLink, containers: list[Report]) -> None:
        """An agent (re)registered: record it, adopt what it runs, resend what it lacks."""
        await self.cluster()
        now = self._clock()
        async with self._lock:
            known = self._nodes.get(node.name)
            self._refuse_impostor(node, known)
            node = maintenance.keep_maintenance(node, known)  # the admin's, not the agent's
            node.registered_at = known.registered_at if known else now
            node.last_heartbeat, node.status = now, "Ready"
            await self._store.save_node(node)  # first: a failed write changes nothing
            self._put_node(node)
            self._heard[node.name] = self._mono()
            replaced = self._links.get(node.name)
            if replaced is not None and replaced is not link:
                replaced.close()  # the newest connection of a node wins
            self._links[node.name] = link
            try:
                await self._reconcile_node(node.name, link, containers, now)
            except BaseException:
                # The agent's stream ends; it reconnects, and its next Register
                # is reconciled from the start.
                if self._links.get(node.name) is link:
                    del self._links[node.name]
                raise
        log.info("event=agent_connected node=%s containers=%d", node.name, len(containers))
        self.wake()

    def _refuse_impostor(self, node: Node, known: Node | None) -> None:
        """Two live agents must not share a node name: each would report the
        other's containers as missing and fail its runs."""
        heard = self._heard.get(node.name)
        if (
            known is not None
            and node.name in self._links
            and known.instance_id
            and node.instance_id
            and known.instance_id != node.instance_id
            and heard is not None
            and self._mono() - heard < self.settings.liveness.not_ready.total_seconds()
        ):
            raise AlreadyExists(
                f"node name '{node.name}' is in use by another connected agent; give this agent "
                "another --node-name (or stop the other one)"
            )

    async def _reconcile_node(
        self, name: str, link: AgentLink, containers: list[Report], now: datetime
    ) -> None:
        present: set[tuple[int, str, int]] = set()
        batch, leftovers = RunBatch(), set()
        for report in containers:
            obs = report.observation
            present.add((report.run_id, obs.role, obs.index))
            run = self._runs.get(report.run_id)
            if run is None:
                leftovers.add(report.run_id)  # finished or unknown run: remove leftovers
                continue
            batch.change(run, partial(sm.observe, node=name, obs=obs, now=now), always=True)

        def catch_up(run: Run) -> list[Action]:
            actions: list[Action] = []
            for r in run.replicas:
                if r.node == name and (run.id, r.role, r.index) not in present:
                    actions += sm.missing_container(run, name, r.role, r.index, now)
            return actions + sm.pending_starts(run, name)

        for run in list(self._runs.values()):
            if any(r.node == name for r in run.replicas):
                batch.change(run, catch_up)
        await self._commit(batch)
        for run_id in sorted(leftovers):
            link.teardown(run_id)

    async def disconnect(self, name: str, link: AgentLink) -> None:
        """The stream ended; liveness decides the node's fate from its heartbeats."""
        async with self._lock:
            if self._links.get(name) is link:
                del self._links[name]
        log.info("event=agent_disconnected node=%s", name)

    def touch(self, name: str) -> None:
        """The node's agent was heard from (any message counts). No lock: liveness
        must never queue behind API work that holds it, or a busy control plane
        would declare healthy nodes Lost."""
        node = self._nodes.get(name)
        if node is not None:
            self._heard[name] = self._mono()
            node.last_heartbeat = self._clock()  # shown by node list; kept in memory

    async def heartbeat(self, name: str) -> None:
        """Record a heartbeat (kept in memory; the node is persisted on status changes)."""
        self.touch(name)
        node = self._nodes.get(name)
        if node is None or node.status == "Ready" or name not in self._links:
            return
        async with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return
            if node.status != "Ready" and name in self._links:
                ready = replace(node, status="Ready", last_heartbeat=self._clock())
                await self._store.save_node(ready)
                self._put_node(ready)
                log.info("event=node_ready node=%s", name)
                self.wake()
            else:
                node.last_heartbeat = self._clock()  # shown by node list; kept in memory

    async def report(self, name: str, report: Report) -> None:
        """A container changed state on node `name`. Reports that arrive while
        others are being stored are decided and stored together (group commit)."""
        await self._reports.submit((name, report))

    async def report_all(self, name: str, reports: list[Report]) -> None:
        """Several reports of node `name`, in the order they happened (a
        busy node sends them in one message)."""
        await self._reports.submit(*((name, report) for report in reports))

    async def _handle_reports(self, reports: list[tuple[str, Report]]) -> None:
        """Decide every report in order, store them all at once, then act.
        A report about a finished run records how its container ended (and a
        container of it still running is removed); one about an unknown run
        only removes the container."""
        async with self._lock:
            batch, now, strays = RunBatch(), self._clock(), []
            for name, report in reports:
                run = self._runs.get(report.run_id)
                if run is None:
                    run = await self._finished_run(report.run_id)
                    if report.observation.state in ("running", "creating"):
                        strays.append((name, report.run_id))
                if run is not None:
                    observe = partial(sm.observe, node=name, obs=report.observation, now=now)
                    batch.change(run, observe, always=True)
            try:
                await self._commit(batch)
            except KeyError:  # retention deleted a finished run meanwhile: store the others
                for change in batch:
                    try:
                        await self._commit([change])
                    except KeyError:
                        self._ended.pop(change.after.id, None)
            for name, run_id in strays:
                link = self._links.get(name)
                if link is not None:
                    link.teardown(run_id)

    async def _finished_run(self, run_id: int) -> Run | None:
        """A run that has ended: from the recently ended ones kept in memory
        (this control plane stored them and alone writes runs), else the store."""
        run = self._recently_ended(run_id) or await self._store.get_run(run_id)
        return run if run is not None and run.terminal else None

    def _recently_ended(self, run_id: int) -> Run | None:
        """A run this control plane saw end, while retention cannot have
        deleted it yet (it ended less than half the retention period ago)."""
        run = self._ended.get(run_id)
        if run is None or run.finished_at is None:
            return None
        keep = self.settings.retain_finished
        if keep and self._clock() - run.finished_at >= keep / 2:
            return None
        return run

    def _remember_ended(self, run: Run) -> None:
        self._ended[run.id] = run
        self._ended.move_to_end(run.id)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    async def remove_node(self, name: str) -> list[int]:
        """Forget a node for good: fail the runs placed on it (each persisted,
        then its teardowns sent, the node's own last), record the removal
        (which revokes its certificates), cut its stream. Returns the ids of
        the runs that failed. Should a write fail, the node is still there and
        a retry goes on where this one stopped."""
        async with self._lock:
            if name not in self._nodes:
                raise NotFound(f"The node '{name}' was not found; `muster node list` shows them.")
            now, batch = self._clock(), RunBatch()
            for run in list(self._runs.values()):
                batch.change(run, lambda d: sm.node_lost(d, name, now, "was removed"))
            await self._commit(batch)
            failed = [change.after.id for change in batch if change.after.terminal]
            await self._store.delete_node(name, now)
            del self._nodes[name]
            self._admission_views = None
            self._heard.pop(name, None)
            link = self._links.pop(name, None)
            if link is not None:
                link.close()
        log.warning("event=node_removed node=%s failed_runs=%d", name, len(failed))
        self.wake()
        return failed

    def _node_ips(self) -> dict[str, str]:
        """Host-port nodes whose advertise address is an IP: where their workers are reached."""
        out = {}
        for node in self._nodes.values():
            if node.network_mode == "host-port" and is_ip(node.advertise_address):
                out[node.name] = node.advertise_address
        return out

    def ready_agents(self, pool: str = "") -> list[tuple[str, AgentLink]]:
        """The Ready, connected nodes (of `pool`; "" for all) and their links, by name."""
        return [
            (name, self._links[name])
            for name, node in sorted(self._nodes.items())
            if node.status == "Ready" and name in self._links and (not pool or pool in node.pools)
        ]

    def agent_of(self, name: str) -> tuple[Node, AgentLink | None]:
        """A known node and its link if it is Ready and connected (NotFound if unknown)."""
        node = self._known(name)
        link = self._links.get(name) if node.status == "Ready" else None
        return node, link

    def knows_node(self, name: str) -> bool:
        """Whether a node of this name has registered and was not removed."""
        return name in self._nodes

    def placed_on(self, name: str, run_id: int, role: str, index: int) -> bool | None:
        """Whether that replica of an active run is placed on node `name`
        (None: the run is not active, ask the store)."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        replica = run.replica(role, index)
        return replica is not None and replica.node == name

    # -- nodes -------------------------------------------------------------

    def nodes(self) -> list[tuple[Node, Capacity, int]]:
        """Every node with what is allocated on it and its replica count."""
        allocated, counts = self._allocations()
        return [
            (n, allocated.get(n.name, Capacity()), counts.get(n.name, 0))
            for n in sorted(self._nodes.values(), key=lambda n: n.name)
        ]

    def _entry(self, node: Node) -> tuple[Node, Capacity, int]:
        """One node as `nodes()` lists it."""
        allocated, counts = self._allocations()
        return node, allocated.get(node.name, Capacity()), counts.get(node.name, 0)

    def _known(self, name: str) -> Node:
        """The node called `name`, or InvalidArgument / NotFound."""
        if not name:
            raise InvalidArgument("name", "is required: a node name, as `muster node list` shows")
        node = self._nodes.get(name)
        if node is None:
            raise NotFound(f"The node '{name}' was not found; `muster node list` shows them.")
        return node

    async def _save_node(self, node: Node) -> Node:
        """Persist a node's new state, then make it the one in force."""
        await self._store.save_node(node)
        self._put_node(node)
        self._schedule_due = True
        return node

    async def cordon_node(self, name: str) -> tuple[Node, Capacity, int]:
        """No new placements on the node; what runs there goes on (a drain too)."""
        async with self._lock:
            node = await self._save_node(maintenance.cordon(self._known(name)))
            entry = self._entry(node)
        log.info("event=node_cordoned node=%s", name)
        return entry

    async def uncordon_node(self, name: str) -> tuple[Node, Capacity, int]:
        """Schedulable again; ends a drain (nothing more is canceled)."""
        async with self._lock:
            node = await self._save_node(maintenance.uncordon(self._known(name)))
            entry = self._entry(node)
        log.info("event=node_uncordoned node=%s", name)
        self.wake()  # pending runs may fit there now
        return entry

    async def drain_node(self, name: str, deadline: timedelta | None) -> tuple[Node, Capacity, int]:
        """Cordon and let the runs with replicas there finish; at `deadline`
        (None: never) the reconcile loop cancels what is left. A node with
        nothing on it is drained at once."""
        async with self._lock:
            now = self._clock()
            node = maintenance.drain(self._known(name), now, deadline)
            if node.drain_deadline is not None and deadline is not None:
                due = self._mono() + deadline.total_seconds()
                self._drain_due[name] = (node.drain_deadline, due)
            _, counts = self._allocations()
            if maintenance.drain_step(node, counts.get(name, 0), now) == "complete":
                node = maintenance.drained(node, now)
            node = await self._save_node(node)
            entry = self._entry(node)
        log.info(
            "event=node_draining node=%s replicas=%d deadline=%s",
            name,
            entry[2],
            node.drain_deadline.isoformat() if node.drain_deadline else "none",
        )
        self.wake()
        return entry

    def _allocations(self) -> tuple[dict[str, Capacity], dict[str, int]]:
        """Requests reserved and replicas placed per node, in one pass over active runs."""
        allocated: dict[str, Capacity] = {}
        counts: dict[str, int] = {}
        for run in self._runs.values():
            for r in run.replicas:
                if r.node:
                    target = run.worker if r.role == "worker" else run.job
                    # A worker replica exists only with a worker target.
                    allocated[r.node] = allocated.get(r.node, Capacity()) + target.request  # type: ignore[union-attr]
                    counts[r.node] = counts.get(r.node, 0) + 1
        return allocated, counts

    def gpus_in_use(self) -> dict[str, set[str]]:
        """GPU devices held by replicas of active runs, per node."""
        return devices_in_use(self._runs.values())

    def add_listener(self, listener: Callable[[Run | None, Run], None]) -> None:
        """Tell `listener(before, after)` of every stored change of an active
        run (metrics; it must be quick and must not change either run)."""
        self._listeners.append(listener)

    def active_counts(self) -> dict[str, int]:
        """Active runs by status (from memory)."""
        counts: dict[str, int] = {}
        for run in self._runs.values():
            counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def connected_count(self) -> int:
        """Agents with an open stream."""
        return len(self._links)

    def _put_node(self, node: Node) -> None:
        self._nodes[node.name] = node
        self._admission_views = None

    def _admission_nodes(self) -> Offers:
        """What admission looks at: pools and what each node offers, not what
        is in use; kept until a node changes, so a create costs no pass over
        the nodes or the runs."""
        if self._admission_views is None:
            self._admission_views = summarize(self._views(allocations=False))
        return self._admission_views

    def _views(self, allocations: bool = True) -> list[NodeView]:
        """The scheduler's picture of the nodes (without `allocations`: as if empty)."""
        allocated, _ = self._allocations() if allocations else ({}, {})
        in_use = self.gpus_in_use() if allocations else {}

        def taken(node: Node) -> Capacity:
            if not allocations:
                return Capacity()
            cap = allocated.get(node.name, Capacity())
            gpus = allocated_gpus(node.gpu_devices, in_use.get(node.name, ()), cap.gpus)
            return Capacity(cap.cpu_millis, cap.memory_bytes, gpus)

        return [
            NodeView(
                name=node.name,
                pools=frozenset(node.pools),
                allocatable=node.allocatable,
                allocated=taken(node),
                schedulable=node.status == "Ready"
                and node.name in self._links
                and not node.cordoned,
                cordoned=node.cordoned,
            )
            for node in self._nodes.values()
        ]

    # -- the reconcile round -----------------------------------------------

    async def _tick(self) -> None:
        now = self._clock()
        await self._check_nodes(now)
        await self._check_drains(now)
        timeout, batch = self.settings.readiness_timeout, RunBatch()
        for run in list(self._runs.values()):
            elapsed = self._elapsed(run)
            batch.change(
                run,
                partial(sm.check_deadlines, now=now, readiness_timeout=timeout, elapsed=elapsed),
            )
        await self._commit(batch)
        await self._schedule()

    async def _check_nodes(self, now: datetime) -> None:
        """Liveness from heartbeat silence (monotonic). Every run with a
        replica on a Lost node fails; checked every round, so a failure whose
        write did not go through is retried."""
        mono, lost = self._mono(), set()
        for name in list(self._nodes):
            node, heard = self._nodes[name], self._heard.get(name)
            if heard is None:
                continue
            status = self.settings.liveness.status_after(timedelta(seconds=mono - heard))
            if status != node.status and not (status == "Ready" and node.status == "Lost"):
                node = replace(node, status=status)
                await self._store.save_node(node)
                self._put_node(node)
                self._schedule_due = True
                log.warning("event=node_status node=%s status=%s", name, status)
            if node.status == "Lost":
                lost.add(name)
        if not lost:
            return
        batch = RunBatch()
        for run in list(self._runs.values()):
            for name in sorted(lost & set(run.nodes())):
                if batch.change(run, partial(sm.node_lost, node=name, now=now)).terminal:
                    break
        await self._commit(batch)

    async def _check_drains(self, now: datetime) -> None:
        """Drains: complete those with no replica left; at a drain's deadline,
        cancel the runs still there (each persisted before its teardown goes)."""
        if not any(node.draining for node in self._nodes.values()):
            return
        _, counts = self._allocations()
        for node in list(self._nodes.values()):
            step = maintenance.drain_step(node, counts.get(node.name, 0), self._drain_now(node))
            if step == "deadline":
                batch = RunBatch()
                for run in list(self._runs.values()):
                    batch.change(run, partial(sm.drain_deadline_passed, node=node.name, now=now))
                await self._commit(batch)
                canceled = sum(1 for change in batch if change.after.terminal)
                log.warning("event=drain_deadline node=%s canceled_runs=%d", node.name, canceled)
                _, counts = self._allocations()
                step = maintenance.drain_step(node, counts.get(node.name, 0), self._drain_now(node))
            if step == "complete":
                await self._save_node(maintenance.drained(node, now))
                log.info("event=node_drained node=%s", node.name)

    def _drain_now(self, node: Node) -> datetime:
        """The instant a drain's deadline is compared with, counted on the
        monotonic clock from when the deadline was set (or first seen after a
        restart), so a wall clock that jumps cancels nothing early or late."""
        if node.drain_deadline is None:
            return self._clock()
        deadline, due = self._drain_due.get(node.name, (None, 0.0))
        if deadline != node.drain_deadline:
            due = self._mono() + (node.drain_deadline - self._clock()).total_seconds()
            self._drain_due[node.name] = (node.drain_deadline, due)
        return node.drain_deadline - timedelta(seconds=max(0.0, due - self._mono()))

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
        demands = []
        for run in pending:
            parts = []
            if run.worker is not None:
                parts.append(
                    Demand("worker", run.worker.node_pool, run.worker.replicas, run.worker.request)
                )
            parts.append(Demand("job", run.job.node_pool, run.job.replicas, run.job.request))
            waited = self._elapsed(run)("created")
            demands.append(PendingRun(run.id, run.created_at, tuple(parts), waited))
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

            def place(d: Run, a: dict = assignment, g: dict = gpus, gen: int = generation) -> list:
                return sm.place(d, a, now, gen, gpu_devices=g)

            run = batch.change(run, place, always=True)
            log.info("event=run_placed run=%d nodes=%s", run_id, ",".join(run.nodes()))
        for run_id, reason in decision.waiting.items():
            run = self._runs[run_id]
            if run.status_reason != reason:

                def wait(d: Run, why: str = reason) -> list[Action]:
                    sm.waiting(d, why)
                    return []

                batch.change(run, wait, always=True)
        await self._commit(batch)
