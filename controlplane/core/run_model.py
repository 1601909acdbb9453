"""What a run is: its targets, replicas, events, the actions the state
machine asks for, and how a run is made and copied. Pure data; the state
machine that changes a run is `controlplane.core.runs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Literal, TypeVar

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
    copy = _shallow(run)
    copy.tags = dict(run.tags)
    copy.replicas = [_shallow(r) for r in run.replicas]
    for r in copy.replicas:
        r.addresses = dict(r.addresses)
    copy.events = list(run.events)
    copy.derived = {}
    return copy


_T = TypeVar("_T")


def _shallow(obj: _T) -> _T:
    """A field-by-field copy without running the dataclass' __init__ (what
    `dataclasses.replace` does costs several times more, and a clone is made
    for every decision on every run)."""
    copy = object.__new__(type(obj))
    copy.__dict__.update(obj.__dict__)
    return copy


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
