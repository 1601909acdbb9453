"""The orchestrator: owns active runs and connected agents, and reconciles the
desired state (runs in the store) with what agents report.

Every change follows one path: take the lock, let the pure core decide
(`core.runs`, `core.scheduler`), persist the run, notify watchers, and only
then send the resulting actions to agents. A crash between persisting and
sending loses nothing: when an agent re-registers, its report is compared with
the stored runs and missing starts or teardowns are sent again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from controlplane.core import nodes as maintenance
from controlplane.core import runs as sm
from controlplane.core.admission import admit
from controlplane.core.capacity import Capacity
from controlplane.core.containers import ContainerSpec, container_spec
from controlplane.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
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
from controlplane.services.codespecs import CodespecService, utcnow
from controlplane.services.requests import RunRequest, resolve_target, timeout_of, validate_tags
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


class Orchestrator:
    """Runs, nodes and agent links, behind one asyncio lock."""

    def __init__(
        self,
        store: Store,
        codespecs: CodespecService,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = utcnow,
        credentials: Callable[[], Mapping[str, Credential]] | None = None,
    ) -> None:
        self._store = store
        self._codespecs = codespecs
        self.settings = settings or Settings()
        self._clock = clock
        self._credentials = credentials or dict
        self._lock = asyncio.Lock()
        self._runs: dict[int, Run] = {}
        self._nodes: dict[str, Node] = {}
        self._links: dict[str, AgentLink] = {}
        self._wake = asyncio.Event()
        self._schedule_due = True
        self._last_schedule: datetime | None = None
        self._changes: dict[int, asyncio.Event] = {}  # run id -> set on its next change
        self.cluster_id = ""
        """The database's cluster id (read at load): in container names and labels."""

    # -- lifecycle ---------------------------------------------------------

    async def load(self) -> None:
        """Load active runs and nodes; give every node a fresh grace period,
        since the control plane itself was away."""
        await self.cluster()
        now = self._clock()
        for node in await self._store.list_nodes():
            node.last_heartbeat = now
            self._nodes[node.name] = node
        for run in await self._store.active_runs():
            self._runs[run.id] = run
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
        """Resolve, admit, persist as Pending, then let the loop place it.

        A request id seen in the last 24 h returns the run it created (as it
        is now) instead: the id is stored with the run, in one transaction, so
        a client that retries after a lost reply never doubles a run."""
        validate_tags(request.tags)
        timeout = timeout_of(request)
        job = await resolve_target(self._codespecs, request.job, "job")
        worker = (
            await resolve_target(self._codespecs, request.worker, "worker")
            if request.worker
            else None
        )
        cluster = await self.cluster()
        async with self._lock:
            if request.request_id:
                since = self._clock() - REQUEST_TTL
                known = await self._store.run_for_request(request.request_id, since)
                if known is not None:
                    log.info("event=run_create_repeated run=%d", known)
                    return await self.get_run(known)
            admit(job, worker, self._views())
            policy = request.pull_policy or self.settings.default_pull_policy
            run = sm.new_run(0, job, worker, self._clock(), timeout, request.tags, policy, cluster)
            run = await self._store.insert_run(run, request.request_id)
            self._runs[run.id] = run
            self._notify(run.id)
        log.info("event=run_created run=%d workers=%d", run.id, len(run.workers))
        self.wake()
        return run

    async def get_run(self, run_id: int) -> Run:
        """The stored run, or NotFound."""
        run = await self._store.get_run(run_id)
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
            await self._commit(run, sm.cancel(run, self._clock()))
        self.wake()
        return run

    async def watch(self, run_id: int) -> AsyncIterator[Run]:
        """The run now and after every change, ending with its terminal state.

        The change event is taken before the run is read, so a change that
        lands between reading and waiting is never missed (changes that land
        together are seen as one)."""
        while True:
            changed = self._changes.setdefault(run_id, asyncio.Event())
            run = await self.get_run(run_id)
            yield run
            if run.terminal:
                return
            await changed.wait()

    def _notify(self, run_id: int) -> None:
        """Wake the run's watchers (and forget the event: no growth per run)."""
        event = self._changes.pop(run_id, None)
        if event is not None:
            event.set()

    async def _commit(self, run: Run, actions: list[Action]) -> None:
        """Persist first, then tell watchers, then act."""
        await self._store.save_run(run)
        self._notify(run.id)
        if run.terminal:
            self._runs.pop(run.id, None)
            self.wake()
        failures = [error for action in actions if (error := self._dispatch(run, action))]
        if failures and not run.terminal:
            await self._commit(run, sm.fail(run, self._clock(), failures[0]))

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
            self._refuse_impostor(node, known, now)
            node = maintenance.keep_maintenance(node, known)  # the admin's, not the agent's
            node.registered_at = known.registered_at if known else now
            node.last_heartbeat, node.status = now, "Ready"
            self._nodes[node.name] = node
            replaced = self._links.get(node.name)
            if replaced is not None and replaced is not link:
                replaced.close()  # the newest connection of a node wins
            self._links[node.name] = link
            await self._store.save_node(node)
            await self._reconcile_node(node.name, link, containers, now)
        log.info("event=agent_connected node=%s containers=%d", node.name, len(containers))
        self.wake()

    def _refuse_impostor(self, node: Node, known: Node | None, now: datetime) -> None:
        """Two live agents must not share a node name: each would report the
        other's containers as missing and fail its runs."""
        if (
            known is not None
            and node.name in self._links
            and known.instance_id
            and node.instance_id
            and known.instance_id != node.instance_id
            and known.last_heartbeat is not None
            and now - known.last_heartbeat < self.settings.liveness.not_ready
        ):
            raise AlreadyExists(
                f"node name '{node.name}' is in use by another connected agent; give this agent "
                "another --node-name (or stop the other one)"
            )

    async def _reconcile_node(
        self, name: str, link: AgentLink, containers: list[Report], now: datetime
    ) -> None:
        present: set[tuple[int, str, int]] = set()
        for report in containers:
            obs = report.observation
            present.add((report.run_id, obs.role, obs.index))
            run = self._runs.get(report.run_id)
            if run is None:
                link.teardown(report.run_id)  # finished or unknown run: remove leftovers
                continue
            await self._commit(run, sm.observe(run, name, obs, now))
        for run in list(self._runs.values()):
            actions: list[Action] = []
            for r in run.replicas:
                if r.node == name and (run.id, r.role, r.index) not in present:
                    actions += sm.missing_container(run, name, r.role, r.index, now)
            actions += sm.pending_starts(run, name)
            if actions or any(r.node == name for r in run.replicas):
                await self._commit(run, actions)

    async def disconnect(self, name: str, link: AgentLink) -> None:
        """The stream ended; liveness decides the node's fate from its heartbeats."""
        async with self._lock:
            if self._links.get(name) is link:
                del self._links[name]
        log.info("event=agent_disconnected node=%s", name)

    async def heartbeat(self, name: str) -> None:
        """Record a heartbeat (kept in memory; the node is persisted on status changes)."""
        async with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return
            node.last_heartbeat = self._clock()
            if node.status != "Ready" and name in self._links:
                node.status = "Ready"
                await self._store.save_node(node)
                log.info("event=node_ready node=%s", name)
                self.wake()

    async def report(self, name: str, report: Report) -> None:
        """A container changed state on node `name`."""
        async with self._lock:
            run = self._runs.get(report.run_id)
            if run is not None:
                await self._commit(run, sm.observe(run, name, report.observation, self._clock()))
                return
            # A finished (or unknown) run: record how its containers ended, and
            # remove any that still run.
            finished = await self._store.get_run(report.run_id)
            if finished is not None and finished.terminal:
                sm.observe(finished, name, report.observation, self._clock())
                await self._store.save_run(finished)
                self._notify(finished.id)
            link = self._links.get(name)
            if link is not None and report.observation.state in ("running", "creating"):
                link.teardown(report.run_id)

    async def remove_node(self, name: str) -> list[int]:
        """Forget a node for good: record the removal (which revokes its
        certificates), cut its stream, fail the runs placed on it. Returns
        the ids of the runs that failed."""
        async with self._lock:
            if name not in self._nodes:
                raise NotFound(f"The node '{name}' was not found; `muster node list` shows them.")
            now = self._clock()
            await self._store.delete_node(name, now)
            del self._nodes[name]
            link = self._links.pop(name, None)
            failed = []
            for run in list(self._runs.values()):
                actions = sm.node_lost(run, name, now, "was removed")
                if run.terminal:
                    failed.append(run.id)
                    await self._commit(run, actions)
                    if link is not None:
                        link.teardown(run.id)  # the last thing the node is told
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
        self._nodes[node.name] = node
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
                    allocated[r.node] = allocated.get(r.node, Capacity()) + target.request  # type: ignore[union-attr]
                    counts[r.node] = counts.get(r.node, 0) + 1
        return allocated, counts

    def gpus_in_use(self) -> dict[str, set[str]]:
        """GPU devices held by replicas of active runs, per node."""
        return devices_in_use(self._runs.values())

    def _views(self) -> list[NodeView]:
        allocated, _ = self._allocations()
        in_use = self.gpus_in_use()

        def taken(node: Node) -> Capacity:
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
        for run in list(self._runs.values()):
            actions = sm.check_deadlines(run, now, self.settings.readiness_timeout)
            if actions or run.terminal:
                await self._commit(run, actions)
        await self._schedule(now)

    async def _check_nodes(self, now: datetime) -> None:
        for node in self._nodes.values():
            if node.last_heartbeat is None:
                continue
            status = self.settings.liveness.status(node.last_heartbeat, now)
            if status == node.status or (status == "Ready" and node.status == "Lost"):
                continue
            node.status = status
            self._schedule_due = True
            await self._store.save_node(node)
            log.warning("event=node_status node=%s status=%s", node.name, status)
            if status == "Lost":
                for run in list(self._runs.values()):
                    actions = sm.node_lost(run, node.name, now)
                    if actions or run.terminal:
                        await self._commit(run, actions)

    async def _check_drains(self, now: datetime) -> None:
        """Drains: complete those with no replica left; at a drain's deadline,
        cancel the runs still there (each persisted before its teardown goes)."""
        if not any(node.draining for node in self._nodes.values()):
            return
        _, counts = self._allocations()
        for node in list(self._nodes.values()):
            step = maintenance.drain_step(node, counts.get(node.name, 0), now)
            if step == "deadline":
                canceled = 0
                for run in list(self._runs.values()):
                    actions = sm.drain_deadline_passed(run, node.name, now)
                    if actions:
                        canceled += 1
                        await self._commit(run, actions)
                log.warning("event=drain_deadline node=%s canceled_runs=%d", node.name, canceled)
                _, counts = self._allocations()
                step = maintenance.drain_step(node, counts.get(node.name, 0), now)
            if step == "complete":
                await self._save_node(maintenance.drained(node, now))
                log.info("event=node_drained node=%s", node.name)

    async def _schedule(self, now: datetime) -> None:
        """Place what fits. Placement only changes when something changed, so
        rounds run on wake-ups, plus a periodic one for anti-starvation aging."""
        periodic = self._last_schedule is None or now - self._last_schedule >= RESCHEDULE_EVERY
        if not (self._schedule_due or periodic):
            return
        self._schedule_due, self._last_schedule = False, now
        pending = [r for r in self._runs.values() if not r.placed]
        if not pending:
            return
        demands = []
        for run in pending:
            parts = []
            if run.worker is not None:
                parts.append(
                    Demand("worker", run.worker.node_pool, run.worker.replicas, run.worker.request)
                )
            parts.append(Demand("job", run.job.node_pool, run.job.replicas, run.job.request))
            demands.append(PendingRun(run.id, run.created_at, tuple(parts)))
        # Pure CPU work on immutable views: off the event loop, so streams keep flowing.
        decision = await asyncio.to_thread(
            schedule, self._views(), demands, now, self.settings.starvation_after
        )
        in_use = self.gpus_in_use()
        node_devices = {n.name: n.gpu_devices for n in self._nodes.values()}
        for run_id, assignment in decision.placements.items():
            run = self._runs[run_id]
            try:  # each replica gets GPU devices of its own, stored before any start
                gpus = assign_devices(assignment, needs_of(run), node_devices, in_use)
            except GpuShortage as exc:
                decision.waiting[run_id] = f"waiting for free GPU devices on {exc}"
                continue
            for key, chosen in gpus.items():
                in_use.setdefault(assignment[key], set()).update(chosen)
            await self._commit(
                run, sm.place(run, assignment, now, new_generation(), gpu_devices=gpus)
            )
            log.info("event=run_placed run=%d nodes=%s", run_id, ",".join(run.nodes()))
        for run_id, reason in decision.waiting.items():
            run = self._runs[run_id]
            if run.status_reason != reason:
                sm.waiting(run, reason)
                await self._commit(run, [])
