"""The run state machine. Pure: it mutates a Run and returns the actions the
caller must carry out (start a container on a node, tear a run down on a node);
it never performs I/O. The service layer persists the run *before* acting.

Lifecycle (docs/contract.md §2): Pending (placing, then waiting for worker readiness) ->
Running (job released) -> Succeeded | Failed | Canceled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Literal

from controlplane.core.capacity import Capacity, request_of
from controlplane.core.codespec import Codespec
from controlplane.core.images import PullPolicy
from controlplane.core.tyger import TygerFields

Status = Literal["Pending", "Running", "Succeeded", "Failed", "Canceled"]
TERMINAL: frozenset[str] = frozenset({"Succeeded", "Failed", "Canceled"})
Role = Literal["job", "worker"]
ContainerState = Literal["pending", "pulling", "creating", "running", "exited", "failed", "removed"]
DEFAULT_TIMEOUT_SECONDS = 43_200


@dataclass
class Target:
    """The job or worker half of a run, with its resolved codespec snapshot."""

    codespec: Codespec
    reference: str  # what the user asked for: "name", "name/versions/N" or "" (inline)
    node_pool: str = ""
    replicas: int = 1
    restart: bool = False
    """Workers only: restarted in place when their process exits (Tyger's
    behaviour) instead of failing the run."""

    derived: dict[str, object] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Forms adapters derive from this target (its wire form), kept with it:
    a target is never changed once made."""

    @cached_property
    def request(self) -> Capacity:
        """What one replica reserves; the snapshot is immutable, so parse it once."""
        return request_of(self.codespec)


@dataclass
class Replica:
    """One container of a run, as last reported by its agent."""

    role: Role
    index: int
    node: str | None = None
    state: ContainerState = "pending"
    ready: bool = False
    exit_code: int | None = None
    message: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    host_ip: str = ""
    """Where other containers reach this worker (reported once it is ready)."""
    gpu_devices: tuple[str, ...] = ()
    """CDI names of the GPU devices it holds alone, chosen at placement."""
    image_digest: str = ""
    """The digest (sha256:...) of the image its container was created from, once reported."""
    pull_bytes_done: int = 0
    """While pulling: bytes of the image fetched so far (0 otherwise or when unknown)."""
    pull_bytes_total: int = 0
    """While pulling: the image's size in bytes (0 otherwise or when unknown)."""
    started_at: datetime | None = None
    """When its agent first reported it past pulling (creating or running): a
    worker's readiness timeout counts from here, so pull time never counts."""

    @property
    def label(self) -> str:
        """How events and reasons name it: `worker 2`, `job` or `job 1`."""
        return f"{self.role} {self.index}"


def hostname(run_id: int, role: str, index: int) -> str:
    """docs/contract.md §2.3: worker i of run R is `run-R-worker-i`."""
    return f"run-{run_id}-{role}-{index}"


def container_name(run_id: int, role: str, index: int, cluster: str = "") -> str:
    """docs/contract.md §3: deterministic container names make every start
    idempotent: `muster-<first 6 of the cluster id>-run-R-worker-i`, so that two
    clusters share a Podman host without colliding (`muster-run-R-worker-i`
    for a run stored before cluster ids existed)."""
    prefix = f"muster-{cluster[:6]}" if cluster else "muster"
    return f"{prefix}-{hostname(run_id, role, index)}"


@dataclass
class Event:
    """One entry of the run's history."""

    time: datetime
    message: str


@dataclass(frozen=True)
class StartReplica:
    """Action: tell the agent on `node` to start this replica (idempotent)."""

    node: str
    run_id: int
    role: Role
    index: int


@dataclass(frozen=True)
class Teardown:
    """Action: tell the agent on `node` to stop and remove the run's containers."""

    node: str
    run_id: int


Action = StartReplica | Teardown


@dataclass
class Run:
    """A run and everything observed about it."""

    id: int
    job: Target
    worker: Target | None
    created_at: datetime
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    tags: dict[str, str] = field(default_factory=dict)
    status: Status = "Pending"
    status_reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    placed_at: datetime | None = None
    generation: int = 0
    """Set at placement and carried by every start; agents report it back, and a
    report with another generation (from an older placement, or a container of
    another database reusing this run id) changes nothing."""
    replicas: list[Replica] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    pull_policy: PullPolicy | None = None
    """When nodes pull the run's images; None (runs stored before pull
    policies existed) means the control plane's default."""
    cluster: str = ""
    """The id of the cluster that created it (its container names carry the
    first 6 characters); "" for runs stored before cluster ids existed."""
    tyger: TygerFields = field(default_factory=TygerFields)
    """Tyger's fields kept as written (cluster name, buffer lifetimes and tags)."""
    buffers: dict[str, str] = field(default_factory=dict)
    """The job's buffers: every parameter of its codespec -> buffer id, fixed
    at creation (never changed in place, so copies may share it)."""
    derived: dict[str, object] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Forms adapters derive from this run as it is (its wire form), kept with
    it so a run read many times is converted once. A run handed out is never
    changed (every change is made on a copy, see clone), and a copy starts
    with none."""

    @property
    def terminal(self) -> bool:
        """Whether the run has ended."""
        return self.status in TERMINAL

    @property
    def workers(self) -> list[Replica]:
        """Worker replicas by index."""
        return [r for r in self.replicas if r.role == "worker"]

    @property
    def jobs(self) -> list[Replica]:
        """Job replicas by index."""
        return [r for r in self.replicas if r.role == "job"]

    @property
    def placed(self) -> bool:
        """Whether every replica has a node."""
        return all(r.node for r in self.replicas)

    @property
    def released(self) -> bool:
        """Whether the job containers were asked to start."""
        return self.started_at is not None

    @property
    def running_count(self) -> int:
        """Job replicas whose container runs."""
        return sum(1 for r in self.jobs if r.state == "running")

    def nodes(self) -> list[str]:
        """Every node that holds (or held) a replica of the run, sorted."""
        return sorted({r.node for r in self.replicas if r.node})

    def replica(self, role: str, index: int) -> Replica | None:
        """Look up one replica."""
        for r in self.replicas:
            if r.role == role and r.index == index:
                return r
        return None

    def container_name(self, role: str, index: int) -> str:
        """The deterministic name of a replica's container."""
        return container_name(self.id, role, index, self.cluster)


def clone(run: Run) -> Run:
    """A copy the state machine may change while `run` stays as stored: the
    caller persists the copy, and only then makes it the run in force
    (targets and events are never changed in place, so they are shared)."""
    return replace(
        run,
        tags=dict(run.tags),
        replicas=[replace(r, addresses=dict(r.addresses)) for r in run.replicas],
        events=list(run.events),
    )


def new_run(
    run_id: int,
    job: Target,
    worker: Target | None,
    now: datetime,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    tags: dict[str, str] | None = None,
    pull_policy: PullPolicy | None = None,
    cluster: str = "",
) -> Run:
    """A freshly admitted run: Pending, nothing placed."""
    run = Run(run_id, job, worker, now, timeout_seconds, dict(tags or {}))
    run.pull_policy = pull_policy
    run.cluster = cluster
    if worker is not None:
        run.replicas += [Replica("worker", i) for i in range(worker.replicas)]
    run.replicas += [Replica("job", i) for i in range(job.replicas)]
    run.status_reason = "waiting to be scheduled"
    run.events.append(Event(now, "run created"))
    return run


def _log(run: Run, now: datetime, message: str) -> None:
    run.events.append(Event(now, message))


def _finish(run: Run, now: datetime, status: Status, reason: str) -> list[Action]:
    """Enter a terminal status and tear down on every node that holds a replica."""
    if run.terminal:
        return []
    run.status = status
    run.status_reason = reason
    run.finished_at = now
    _log(run, now, f"run {status.lower()}: {reason}" if reason else f"run {status.lower()}")
    return [Teardown(node, run.id) for node in run.nodes()]


def waiting(run: Run, reason: str) -> None:
    """Record what an unplaced run waits for (no event: it repeats every tick)."""
    if not run.terminal and not run.placed:
        run.status_reason = reason


def place(
    run: Run,
    assignment: dict[tuple[str, int], str],
    now: datetime,
    generation: int = 1,
    gpu_devices: Mapping[tuple[str, int], tuple[str, ...]] | None = None,
) -> list[Action]:
    """Record a gang placement under `generation` (unique per placement), with
    the GPU devices each replica holds; start the workers (or the job when
    there are none)."""
    assert not run.terminal and not run.placed
    run.generation = generation
    for r in run.replicas:
        r.node = assignment[(r.role, r.index)]
        r.gpu_devices = tuple((gpu_devices or {}).get((r.role, r.index), ()))
        gpus = f" with GPU {', '.join(r.gpu_devices)}" if r.gpu_devices else ""
        gpus = gpus.replace("GPU", "GPUs", 1) if len(r.gpu_devices) > 1 else gpus
        _log(run, now, f"{r.label} scheduled on {r.node}{gpus}")
    run.placed_at = now
    if run.workers:
        run.status_reason = f"waiting for workers to be ready: 0 of {len(run.workers)} ready"
        # Every replica was just placed: r.node is set.
        return [StartReplica(r.node, run.id, "worker", r.index) for r in run.workers]  # type: ignore[arg-type]
    return _release(run, now)


def _release(run: Run, now: datetime) -> list[Action]:
    run.started_at = now
    run.status = "Running"
    run.status_reason = ""
    _log(run, now, "job released")
    # Released replicas are placed: r.node is set.
    return [StartReplica(r.node, run.id, "job", r.index) for r in run.jobs]  # type: ignore[arg-type]


def pending_starts(run: Run, node: str) -> list[Action]:
    """Starts to (re)send to `node`: replicas placed there that are not started yet.

    Used when an agent (re)connects, so that a crash between persisting a
    placement and telling the agent loses nothing.
    """
    if run.terminal:
        return []
    out: list[Action] = []
    for r in run.replicas:
        if r.node == node and r.state in ("pending", "pulling", "creating"):
            if r.role == "worker" or run.released:
                out.append(StartReplica(node, run.id, r.role, r.index))
    return out


@dataclass(frozen=True)
class Observation:
    """What an agent reported about one container."""

    role: Role
    index: int
    state: ContainerState
    ready: bool = False
    exit_code: int | None = None
    message: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    """0: the container carries no generation (started before generations existed)."""
    host_ip: str = ""
    image_digest: str = ""
    pull_bytes_done: int = 0
    pull_bytes_total: int = 0
    buffer_error: str = ""
    """A job with buffers: why a copy between a pipe and its buffer failed
    (reported with EXITED, once every copy ended); "" when all succeeded."""


def observe(run: Run, node: str, obs: Observation, now: datetime) -> list[Action]:
    """Apply an agent's container report and decide what follows."""
    r = run.replica(obs.role, obs.index)
    if r is None or r.node != node:
        return [Teardown(node, run.id)] if run.terminal else []
    if obs.generation and obs.generation != run.generation:
        return []  # a stale placement's container: never overrides this one
    if run.terminal:
        r.state, r.exit_code = (
            obs.state,
            obs.exit_code if obs.exit_code is not None else r.exit_code,
        )
        return []
    was_ready, old_state = r.ready, r.state
    r.state, r.ready, r.message = obs.state, obs.ready, obs.message
    if obs.exit_code is not None:
        r.exit_code = obs.exit_code
    if obs.addresses:
        r.addresses = dict(obs.addresses)
    if obs.host_ip:
        r.host_ip = obs.host_ip
    _observe_image(run, r, obs, old_state, now)
    if r.state != old_state and r.state == "running":
        _log(run, now, f"{r.label} running on {node}")
    if r.role == "worker":
        return _observe_worker(run, r, was_ready, now)
    return _observe_job(run, r, now, obs.buffer_error)


def _image_of(run: Run, r: Replica) -> str:
    target = run.worker if r.role == "worker" else run.job
    return target.codespec.image if target is not None else ""


def _observe_image(
    run: Run, r: Replica, obs: Observation, old_state: ContainerState, now: datetime
) -> None:
    """Pull progress, the image digest and the start of the readiness clock."""
    if obs.image_digest:
        r.image_digest = obs.image_digest
    if r.state == "pulling":
        r.pull_bytes_done, r.pull_bytes_total = obs.pull_bytes_done, obs.pull_bytes_total
        if old_state != "pulling":
            _log(run, now, f"{r.label} pulling image {_image_of(run, r)} on {r.node}")
        return
    r.pull_bytes_done = r.pull_bytes_total = 0
    if old_state == "pulling" and r.state in ("creating", "running"):
        digest = f" ({r.image_digest})" if r.image_digest else ""
        _log(run, now, f"{r.label} pulled image {_image_of(run, r)} on {r.node}{digest}")
    if r.started_at is None and r.state in ("creating", "running"):
        r.started_at = now


def _observe_worker(run: Run, r: Replica, was_ready: bool, now: datetime) -> list[Action]:
    if r.state == "failed":
        return _finish(
            run, now, "Failed", f"worker {r.index} failed to start on {r.node}: {r.message}"
        )
    if r.state in ("exited", "removed"):
        code = f"with code {r.exit_code}" if r.exit_code is not None else "unexpectedly"
        if r.state == "exited" and run.worker is not None and run.worker.restart:
            r.ready = False
            _log(run, now, f"worker {r.index} exited {code}; restarting it (restartPolicy Always)")
            return []
        return _finish(run, now, "Failed", f"worker {r.index} exited {code}")
    if r.ready and not was_ready:
        _log(run, now, f"worker {r.index} ready")
    ready = sum(1 for w in run.workers if w.ready)
    if not run.released:
        if ready == len(run.workers):
            return _release(run, now)
        run.status_reason = f"waiting for workers to be ready: {ready} of {len(run.workers)} ready"
    return []


def _observe_job(run: Run, r: Replica, now: datetime, buffer_error: str = "") -> list[Action]:
    """A job's report decides the outcome: it succeeds only when every job
    replica exited 0 and, with buffers, every copy of its pipes succeeded."""
    name = "job" if len(run.jobs) == 1 else f"job {r.index}"
    if r.state == "failed":
        return _finish(run, now, "Failed", f"{name} failed to start on {r.node}: {r.message}")
    if r.state == "removed" and r.exit_code is None:
        return _finish(run, now, "Failed", f"{name} container disappeared from {r.node}")
    if r.state in ("exited", "removed"):
        if r.exit_code != 0:
            copies = f" ({buffer_error})" if buffer_error else ""
            return _finish(run, now, "Failed", f"{name} exited with code {r.exit_code}{copies}")
        if buffer_error:  # the job did its part, but its data did not get through
            return _finish(
                run, now, "Failed", f"{name} exited with code 0 but a buffer failed: {buffer_error}"
            )
        _log(run, now, f"{name} exited with code 0")
        if all(j.state in ("exited", "removed") and j.exit_code == 0 for j in run.jobs):
            return _finish(run, now, "Succeeded", "")
    return []


def fail(run: Run, now: datetime, reason: str) -> list[Action]:
    """Fail the run for a reason found outside the state machine (e.g. a start
    that could not even be sent)."""
    return _finish(run, now, "Failed", reason)


def cancel(run: Run, now: datetime) -> list[Action]:
    """User cancel: Canceled at once, then teardown."""
    return _finish(run, now, "Canceled", "canceled by user")


def node_lost(run: Run, node: str, now: datetime, how: str = "was lost") -> list[Action]:
    """A node holding replicas of the run stopped heartbeating for too long
    (or, with `how` = "was removed", an admin removed it)."""
    on_node = [r.label for r in run.replicas if r.node == node]
    if run.terminal or not on_node:
        return []
    return _finish(run, now, "Failed", f"node {node} {how} ({', '.join(on_node)} placed there)")


def drain_deadline_passed(run: Run, node: str, now: datetime) -> list[Action]:
    """A drain of `node` reached its deadline with replicas of the run still
    there: Canceled (an admin's decision, like a cancel, not the run's fault)."""
    on_node = [r.label for r in run.replicas if r.node == node]
    if run.terminal or not on_node:
        return []
    return _finish(
        run,
        now,
        "Canceled",
        f"node {node} was drained (deadline passed; {', '.join(on_node)} placed there)",
    )


def missing_container(run: Run, node: str, role: str, index: int, now: datetime) -> list[Action]:
    """An agent re-registered without a container that had been running."""
    r = run.replica(role, index)
    if run.terminal or r is None or r.node != node or r.state not in ("running",):
        return []
    return observe(run, node, Observation(r.role, r.index, "removed"), now)


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


def check_deadlines(
    run: Run, now: datetime, readiness_timeout: timedelta, elapsed: Elapsed | None = None
) -> list[Action]:
    """Run timeout (from creation) and worker readiness timeout (from each
    worker's container start, see `readiness_clock`). `elapsed` measures
    time since an anchor: the orchestrator's is monotonic, so a wall clock
    that jumps fails nothing early or late; by default it is `now` minus the
    stored wall-clock instant. `now` only stamps the events."""
    if run.terminal:
        return []
    stamps = anchors(run)
    since_anchor = elapsed or (lambda name: now - stamps[name])
    if since_anchor("created") >= timedelta(seconds=run.timeout_seconds):
        return _finish(
            run, now, "Failed", f"the run timed out after {run.timeout_seconds}s (timeoutSeconds)"
        )
    for w in run.workers:
        anchor = anchor_of(run, w)
        if anchor is not None and since_anchor(anchor) >= readiness_timeout:
            detail = w.message or f"container is {w.state}"
            started = "its start" if w.started_at else "placement"
            return _finish(
                run,
                now,
                "Failed",
                f"worker {w.index} was not ready within {int(readiness_timeout.total_seconds())}s "
                f"of {started}: {detail}",
            )
    return []
