"""The container runtime interface the agent drives, and the data it exchanges.

The agent logic (``supervisor``) only talks to a :class:`Runtime`, so the same
logic runs against real Podman (``runtime_podman``) and against a scriptable
in-memory fake (``runtime_fake``) in tests and scale simulations.

Contract every implementation keeps (``tests/agent/test_runtime_contract.py``
checks it on both):

* ``start`` is idempotent by container name: an existing container is left as
  it is (a created-but-never-started one is started), never duplicated.
* ``start`` never pulls: a missing image raises :class:`ImageNotFound`.
  Pulling is a step of its own, :meth:`Runtime.pull`, that the agent takes
  before ``start`` as the start's pull policy says (:mod:`agent.pulls`: one
  pull per image at a time, a limit on concurrent pulls, a timeout,
  credentials). ``pull`` raises :class:`PullError` with the registry's or
  Podman's cause; the agent adds the image, registry and node to it.
* ``start`` either leaves a started container behind or raises and leaves
  nothing behind, so a failed start can simply be retried.
* ``list_managed`` returns only containers of *this* node (label
  ``muster.node``), because several agents may share one Podman host, and,
  once the node's cluster is known (``cluster.cluster_id``, from Registered),
  only containers of that cluster or with no ``muster.cluster`` label (made
  before cluster ids existed): another cluster's containers on the same host
  are left alone. Everything that acts on a run's containers goes through it.
* ``follow_logs`` yields every line a container wrote, from its very first,
  exactly once and in order within each stream; calling it again starts over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agent.logutil import log

_log = logging.getLogger(__name__)

Role = Literal["job", "worker"]
"""Replica role, also the value of the ``muster.role`` label."""

State = Literal["creating", "running", "exited", "failed"]
"""Container state as the agent reports it."""

PullPolicy = Literal["missing", "always", "never"]
"""When the agent pulls a start's image: only when absent, at every start, never."""

LogStreamName = Literal["stdout", "stderr"]
"""Which output stream a log line came from."""

NetworkMode = Literal["bridge", "host-port"]
"""``bridge``: shared Podman network with DNS aliases. ``host-port``: endpoints
published on host ports allocated by the agent."""

LABEL_RUN_ID = "muster.run-id"
LABEL_ROLE = "muster.role"
LABEL_REPLICA = "muster.replica"
LABEL_NODE = "muster.node"
LABEL_HOSTNAME = "muster.hostname"
# Declared endpoints as JSON, so a restarted agent can probe and report the
# addresses of containers it re-adopts without asking the control plane.
LABEL_ENDPOINTS = "muster.endpoints"
# The placement generation of the start that made the container.
LABEL_GENERATION = "muster.generation"
# The id of the cluster (control plane database) whose run the container belongs to.
LABEL_CLUSTER = "muster.cluster"


class RuntimeFailure(Exception):
    """A runtime operation failed; ``str()`` is a message fit for the user."""


class ImageNotFound(RuntimeFailure):
    """The image is not present on the node (and is not to be pulled)."""

    def __init__(self, image: str, node: str, hint: str = "build or load it there") -> None:
        super().__init__(f"image '{image}' not found on node '{node}'; {hint}")
        self.image = image
        self.node = node


class PullError(RuntimeFailure):
    """A pull failed; ``str()`` is the cause (e.g. ``unauthorized: authentication required``)."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry. The password never appears in ``repr``."""

    registry: str
    """``host[:port]`` (or ``host[:port]/namespace`` from an auth file)."""
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PullProgress:
    """How far a pull is; 0/0 when Podman does not say (Podman 4.3 never does)."""

    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[PullProgress], None]
"""Called (on the event loop) whenever a pull's progress changes."""


@dataclass(frozen=True)
class ImageSummary:
    """One image in local storage."""

    tags: tuple[str, ...]
    digest: str
    size_bytes: int


@dataclass(frozen=True)
class BufferPipe:
    """One buffer of a job: the FIFO ``name`` in its pipe directory, and the buffer
    the agent copies it to (``output``: the job writes the FIFO) or from."""

    name: str
    output: bool
    buffer_id: str
    access_url: str = field(repr=False)
    """A signed container URL: a bearer credential, never logged."""
    ca_pem: str = ""
    """CA of the data plane's TLS certificate ("": plain HTTP or the system's CAs)."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one replica's container."""

    run_id: int
    role: Role
    replica: int
    name: str
    hostname: str
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    working_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cpu_limit_millis: int = 0
    memory_limit_bytes: int = 0
    shm_size_bytes: int = 0
    restart_always: bool = False
    """Restarted in place by the runtime whenever its process exits (a worker
    whose run says restartPolicy Always); stopping it is final."""
    """Size of /dev/shm; 0: the runtime's default."""
    endpoints: dict[str, int] = field(default_factory=dict)
    """Endpoint name -> container port, in declaration order (workers only)."""
    generation: int = 0
    """Placement generation, kept as a label and reported back."""
    hosts: dict[str, str] = field(default_factory=dict)
    """Extra /etc/hosts entries: name -> IP address."""
    gpu_devices: tuple[str, ...] = ()
    """CDI device names (``nvidia.com/gpu=0``) Podman adds to the container."""
    pull_policy: PullPolicy = "missing"
    """When the agent pulls ``image`` before creating the container (not the runtime's job)."""
    registry_credentials: tuple[RegistryAuth, ...] = ()
    """Credentials from the control plane; they win over the agent's own."""
    cluster_id: str = ""
    """The cluster's id, kept as the label ``muster.cluster`` ("": no label)."""
    buffers: tuple[BufferPipe, ...] = ()
    """The job's buffers, one FIFO each (:mod:`agent.buffer_copies`)."""
    pipe_dir: str = ""
    """Host directory holding the FIFOs, mounted at ``PIPE_DIR`` in the container; the
    agent sets it before the start ("": no buffers, nothing mounted)."""


@dataclass
class ContainerInfo:
    """What the runtime observed about one managed container."""

    name: str
    run_id: int
    role: Role
    replica: int
    state: State
    exit_code: int | None = None
    hostname: str = ""
    ip: str | None = None
    """Address on the run network; ``None`` when unknown (list results omit it)."""
    host_ports: dict[str, int] = field(default_factory=dict)
    """Endpoint name -> published host port (host-port mode only)."""
    endpoints: dict[str, int] = field(default_factory=dict)
    """Declared endpoint name -> container port."""
    generation: int = 0
    """Placement generation from the container's label (0 if it has none)."""
    message: str = ""
    """Why the state is what it is, when that is not obvious (e.g. a reset by a reboot)."""
    image_digest: str = ""
    """Digest (``sha256:...``) of the image the container was created from; empty when
    not known (list results omit it)."""
    cluster_id: str = ""
    """The ``muster.cluster`` label ("": made before cluster ids existed)."""


@dataclass(frozen=True)
class EndpointTarget:
    """One endpoint: where the agent probes it and the address the job uses."""

    name: str
    port: int
    """Declared container port."""
    probe_host: str | None
    """Host the agent connects to for readiness; ``None`` if not known yet."""
    probe_port: int
    address: str
    """``host:port`` as the job must use it."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of container output, or one part of a long line, as the runtime recorded it."""

    stream: LogStreamName
    time_ns: int
    """When the container wrote it (the runtime's timestamp), ns since the epoch."""
    text: str
    """The line without its newline, decoded as UTF-8 (invalid bytes replaced)."""
    partial: bool = False
    """The line goes on in the next :class:`LogLine` of the same stream (a part of a line
    longer than the part limit, or of output with no newline yet; see :mod:`agent.logparts`)."""
    sequence: int | None = None
    """The line's number in its stream (0-based), when the runtime knows it better than
    by counting from the first line it yields (a log file that replaced earlier ones)."""


class ClusterScope:
    """Which containers a node's agent manages: once ``cluster_id`` is known,
    those of that cluster and those without a cluster label; until then, all.
    Each container of another cluster is logged once, then silently left alone."""

    def __init__(self) -> None:
        self.cluster_id = ""
        """The node's cluster, from Registered ("" while unknown)."""
        self._logged: set[str] = set()

    def admits(self, name: str, cluster_id: str) -> bool:
        """Whether the agent manages container ``name`` labelled ``cluster_id``
        (logs a container of another cluster once)."""
        if not self.cluster_id or not cluster_id or cluster_id == self.cluster_id:
            return True
        if name not in self._logged:
            if len(self._logged) > 10_000:  # bound memory
                self._logged.clear()
            self._logged.add(name)
            log(
                _log,
                logging.INFO,
                "container_of_other_cluster",
                name=name,
                cluster=cluster_id,
                ours=self.cluster_id,
                action="left_alone",
            )
        return False

    def keep(self, infos: list[ContainerInfo]) -> list[ContainerInfo]:
        """The containers of ``infos`` the agent manages."""
        return [i for i in infos if self.admits(i.name, i.cluster_id)]


class Runtime(Protocol):
    """A container runtime on one node. All methods are safe to await on the loop."""

    cluster: ClusterScope
    """Scopes ``list_managed`` (and so every run-wide operation) to the node's cluster."""

    @property
    def node_name(self) -> str:
        """Name of the node (label ``muster.node`` on every container)."""
        ...

    @property
    def network_name(self) -> str:
        """The Podman network run containers join."""
        ...

    @property
    def network_mode(self) -> NetworkMode:
        """How worker endpoints are exposed."""
        ...

    async def ensure_network(self) -> None:
        """Create the run network (bridge, DNS on) if it does not exist."""
        ...

    async def image_exists(self, image: str) -> bool:
        """Whether ``image`` is present locally."""
        ...

    async def image_digest(self, image: str) -> str | None:
        """The digest of local ``image`` (``""`` if it has none), ``None`` if absent."""
        ...

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        tls_verify: bool = True,
        progress: ProgressCallback | None = None,
        limit_seconds: float | None = None,
    ) -> str:
        """Pull ``image`` from its registry (re-resolving its tag); return its digest.

        Raises :class:`PullError` with the cause. ``limit_seconds`` bounds how long
        the runtime may block on the pull (so no thread outlives the caller's
        deadline by much); the caller enforces its own deadline too.
        The credentials go to the runtime with this one pull and are never stored.
        """
        ...

    async def list_images(self) -> list[ImageSummary]:
        """Every image in local storage."""
        ...

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start ``spec`` idempotently by name; see the module contract."""
        ...

    async def inspect(self, name: str) -> ContainerInfo | None:
        """Full detail (including ``ip``) of one managed container, or ``None``."""
        ...

    async def list_managed(self) -> list[ContainerInfo]:
        """Every container of this node carrying ``muster.run-id``."""
        ...

    async def watch_changes(self, notify: Callable[[], None]) -> None:
        """Call ``notify`` (on the event loop) whenever a container may have
        changed (it started, exited, was removed), until cancelled; returns or
        raises if the source of such news ends, and may be called again.

        A hint, not the truth: the supervisor then lists the containers, so a
        missed or spurious notification costs only time (a periodic listing
        catches anything missed). It lets an exit be seen at once instead of
        at the next poll.
        """
        ...

    async def stop_run(self, run_id: int) -> None:
        """Stop (short timeout) every running container of ``run_id``, keeping them.

        Idempotent. Stopped containers keep their logs, so log followers can
        read to the end before :meth:`remove_run` deletes them.
        """
        ...

    def follow_logs(self, name: str) -> AsyncIterator[list[LogLine]]:
        """Every stdout/stderr line of container ``name``, in chunks, from the first.

        Each line is yielded exactly once, in order within its stream (stdout
        and stderr may interleave in any order). A last line without a newline
        is yielded once the container has stopped. The iterator ends when the
        container has stopped and every line was yielded, or when the container
        no longer exists. It never blocks the event loop, and it only reads on
        as fast as the consumer takes chunks (backpressure). Closing it early
        releases everything it holds; a new call starts again from the first line.
        """
        ...

    async def remove_run(self, run_id: int) -> list[ContainerInfo]:
        """Stop (short timeout) and remove every container of ``run_id``.

        Idempotent; returns what was removed.
        """
        ...

    def endpoint_targets(self, info: ContainerInfo) -> list[EndpointTarget]:
        """Probe targets and job-facing addresses of ``info``'s endpoints, in order."""
        ...

    async def probe(self, target: EndpointTarget) -> bool:
        """Whether ``target`` accepts a TCP connection right now."""
        ...

    async def close(self) -> None:
        """Release client resources (containers keep running)."""
        ...


def container_labels(spec: ContainerSpec, node: str) -> dict[str, str]:
    """The labels that make a container re-adoptable after any restart."""
    return {
        LABEL_RUN_ID: str(spec.run_id),
        LABEL_ROLE: spec.role,
        LABEL_REPLICA: str(spec.replica),
        LABEL_NODE: node,
        LABEL_HOSTNAME: spec.hostname,
        LABEL_ENDPOINTS: json.dumps(spec.endpoints, separators=(",", ":")),
        LABEL_GENERATION: str(spec.generation),
        **({LABEL_CLUSTER: spec.cluster_id} if spec.cluster_id else {}),
    }


@dataclass(frozen=True)
class LabelIdentity:
    """Run/role/replica/endpoints decoded from a container's labels."""

    run_id: int
    role: Role
    replica: int
    hostname: str
    endpoints: dict[str, int]
    generation: int = 0
    cluster_id: str = ""


def identity_from_labels(labels: Mapping[str, str]) -> LabelIdentity | None:
    """Decode muster labels; ``None`` when they are missing or malformed.

    Malformed labels (someone else's container, a hand edit) must not crash
    the agent's watch loop, so they are ignored instead.
    """
    try:
        run_id = int(labels[LABEL_RUN_ID])
        role = labels.get(LABEL_ROLE, "")
        if role not in ("job", "worker"):
            return None
        replica = int(labels.get(LABEL_REPLICA, "0"))
        raw = json.loads(labels.get(LABEL_ENDPOINTS) or "{}")
        endpoints = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        generation = int(labels.get(LABEL_GENERATION) or 0)
    except (KeyError, ValueError, TypeError):
        return None
    return LabelIdentity(
        run_id=run_id,
        role=role,  # type: ignore[arg-type]  # checked above
        replica=replica,
        hostname=labels.get(LABEL_HOSTNAME, ""),
        endpoints=endpoints,
        generation=generation,
        cluster_id=labels.get(LABEL_CLUSTER, ""),
    )
