"""The state the orchestrator's parts share, and the path of every run change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial

from controlplane.core import runs as lifecycle
from controlplane.core.admission import Offers, summarize
from controlplane.core.capacity import Capacity
from controlplane.core.containers import container_spec
from controlplane.core.errors import InvalidArgument, NotFound
from controlplane.core.gpus import allocated_gpus
from controlplane.core.images import Credential
from controlplane.core.ledger import Ledger
from controlplane.core.nodes import Node
from controlplane.core.runs import Action, Run, StartReplica, Teardown
from controlplane.core.scheduler import NodeView
from controlplane.services.batch import Change, RunBatch
from controlplane.services.codespecs import CodespecService, utcnow
from controlplane.services.orchestrator.links import AgentLink, is_ip
from controlplane.services.orchestrator.settings import ENDED_KEPT, Settings
from controlplane.services.run_buffers import RunBuffers
from controlplane.store.base import Store

log = logging.getLogger(__name__)


class OrchestratorState:
    """What every part of the orchestrator shares: runs, nodes and agent links
    behind one asyncio lock, and the one path every run change takes (decide
    on a copy, store it, make it the run in force, tell watchers, then act)."""

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
        self._ledger = Ledger()
        """What the active runs hold per node: changed only with `_runs`, by
        `_set_run` and `_drop_run`."""
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
        self._ips: dict[str, str] | None = None  # _node_ips, until a node changes
        self._listeners: list[Callable[[Run | None, Run], None]] = []
        # Runs this control plane saw end, newest last (reports of their
        # containers' ends keep arriving after the run ended).
        self._ended: OrderedDict[int, Run] = OrderedDict()
        self._unsaved: dict[int, Run] = {}
        """Runs in force whose latest change was observed only and is not
        stored yet (write-behind: `flush` stores them, once per tick)."""
        self.cluster_id = ""
        """The database's cluster id (read at load): in container names and labels."""

    async def cluster(self) -> str:
        """The cluster id, read from the store once."""
        if not self.cluster_id:
            self.cluster_id = await self._store.cluster_id()
        return self.cluster_id

    def wake(self) -> None:
        """Ask for a reconcile round now, with scheduling: something changed
        that may let a pending run fit (a new run, freed capacity, a node)."""
        self._schedule_due = True
        self._wake.set()

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

    async def _commit(self, batch: Iterable[Change], write_behind: bool = False) -> None:
        """Persist every run the batch changed (copies the state machine
        changed) in one transaction first; only then make them the runs in
        force, tell watchers and act. A failed write raises and leaves memory
        as it was, with nothing sent. With `write_behind`, changes that only
        record what agents observed are made in force at once and stored by
        the next `flush` (a container's creating, running and ready cost one
        write, not three); every decision is still stored before it acts."""
        changes = list(batch)
        if not changes:
            return
        now = [c for c in changes if not (write_behind and c.observed_only)]
        if now:
            await self._store.save_runs([change.after for change in now])
        stored = {change.after.id for change in now}
        for change in changes:
            self._in_force(change)
            if change.after.id in stored:
                self._unsaved.pop(change.after.id, None)
            else:
                self._unsaved[change.after.id] = change.after
        for change in changes:
            run = change.after
            failures = [e for action in change.actions if (e := self._dispatch(run, action))]
            if failures and not run.terminal:
                await self._change(
                    run, partial(lifecycle.fail, now=self._clock(), reason=failures[0])
                )

    async def flush(self) -> None:
        """Store the changes kept for write-behind, in one transaction (a run
        retention deleted meanwhile is dropped). On failure they stay kept, for
        the next flush."""
        if not self._unsaved:
            return
        runs = list(self._unsaved.values())
        try:
            await self._store.save_runs(runs)
        except KeyError:  # a finished run retention deleted: store the others one by one
            for run in runs:
                with contextlib.suppress(KeyError):
                    await self._store.save_runs([run])
        for run in runs:
            if self._unsaved.get(run.id) is run:
                del self._unsaved[run.id]

    def _in_force(self, change: Change) -> None:
        """The run a change made (just stored, or kept for write-behind)
        replaces the run in memory; its watchers wake."""
        run = change.after
        for listener in self._listeners:
            listener(change.before, run)
        if run.terminal:
            self._remember_ended(run)
            if self._drop_run(run.id):  # it has just ended
                self.run_buffers.run_ended(run)
                self._marks.pop(run.id, None)
                self.wake()
        elif run.id in self._runs:
            self._set_run(run)
            self._mark(run)
        self._notify(run.id)

    def _mark(self, run: Run) -> None:
        """Take the monotonic instant of every deadline anchor of `run` not
        marked yet (its creation, placement, each worker's start), from its
        stored wall-clock value: once, as it is set (so it is about now) or as
        the run is loaded after a restart; never again."""
        marks = self._marks.setdefault(run.id, {})
        fresh = {k: v for k, v in lifecycle.anchors(run).items() if k not in marks}
        if not fresh:
            return
        now, mono = self._clock(), self._mono()
        for name, at in fresh.items():
            marks[name] = mono - max(0.0, (now - at).total_seconds())

    def _elapsed(self, run: Run) -> lifecycle.Elapsed:
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

    def _node_ips(self) -> dict[str, str]:
        """Host-port nodes whose advertise address is an IP: where their workers
        are reached (derived once per change of the nodes, not per start)."""
        if self._ips is None:
            self._ips = {
                node.name: node.advertise_address
                for node in self._nodes.values()
                if node.network_mode == "host-port" and is_ip(node.advertise_address)
            }
        return self._ips

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

    def _put_node(self, node: Node) -> None:
        self._nodes[node.name] = node
        self._nodes_changed()

    def _nodes_changed(self) -> None:
        """Forget what was derived from the nodes (a node was added, replaced or removed)."""
        self._admission_views = None
        self._ips = None

    def _set_run(self, run: Run) -> None:
        """`run` is an active run in force (new, changed or loaded)."""
        self._runs[run.id] = run
        self._ledger.put(run)

    def _drop_run(self, run_id: int) -> bool:
        """The run is no longer active; whether it was."""
        self._ledger.drop(run_id)
        return self._runs.pop(run_id, None) is not None

    def _allocations(self) -> tuple[dict[str, Capacity], dict[str, int]]:
        """Requests reserved and replicas placed per node (from the ledger)."""
        return self._ledger.allocated(), self._ledger.counts()

    def gpus_in_use(self) -> dict[str, set[str]]:
        """GPU devices held by replicas of active runs, per node."""
        return self._ledger.devices_in_use()

    def _views(self, allocations: bool = True) -> list[NodeView]:
        """The scheduler's picture of the nodes (without `allocations`: as if empty)."""
        allocated, _ = self._allocations() if allocations else ({}, {})
        in_use = self.gpus_in_use() if allocations else {}

        none = Capacity()

        def taken(node: Node) -> Capacity:
            if not allocations:
                return none
            cap = allocated.get(node.name, none)
            if not node.gpu_devices:  # GPUs as a count only: the requests are all there is
                return cap
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

    def _admission_nodes(self) -> Offers:
        """What admission looks at: pools and what each node offers, not what
        is in use; kept until a node changes, so a create costs no pass over
        the nodes or the runs."""
        if self._admission_views is None:
            self._admission_views = summarize(self._views(allocations=False))
        return self._admission_views

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

    def _known(self, name: str) -> Node:
        """The node called `name`, or InvalidArgument / NotFound."""
        if not name:
            raise InvalidArgument("name", "is required: a node name, as `muster node list` shows")
        node = self._nodes.get(name)
        if node is None:
            raise NotFound(f"The node '{name}' was not found; `muster node list` shows them.")
        return node
