"""Conversions between ``muster.v1`` messages and the runtime's dataclasses.

Kept in one place so the wire format never leaks into the runtimes and the
runtimes' types never leak onto the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from agent.logutil import log
from agent.runtime import (
    BufferPipe,
    ContainerSpec,
    EndpointTarget,
    ImageSummary,
    LogStreamName,
    NetworkMode,
    PullPolicy,
    RegistryAuth,
    Role,
    State,
)
from muster.v1 import agent_pb2, node_pb2, run_pb2

ROLE_TO_PB: dict[Role, run_pb2.ReplicaRole] = {
    "job": run_pb2.REPLICA_ROLE_JOB,
    "worker": run_pb2.REPLICA_ROLE_WORKER,
}
_ROLE_FROM_PB: dict[int, Role] = {v: k for k, v in ROLE_TO_PB.items()}

WireState = State | str  # plus "pulling" and "removed", which only exist on the wire
STATE_TO_PB: dict[str, run_pb2.ContainerState] = {
    "pulling": run_pb2.CONTAINER_STATE_PULLING,
    "creating": run_pb2.CONTAINER_STATE_CREATING,
    "running": run_pb2.CONTAINER_STATE_RUNNING,
    "exited": run_pb2.CONTAINER_STATE_EXITED,
    "failed": run_pb2.CONTAINER_STATE_FAILED,
    "removed": run_pb2.CONTAINER_STATE_REMOVED,
}
STREAM_TO_PB: dict[LogStreamName, run_pb2.LogStream] = {
    "stdout": run_pb2.LOG_STREAM_STDOUT,
    "stderr": run_pb2.LOG_STREAM_STDERR,
}
NETWORK_MODE_TO_PB: dict[NetworkMode, node_pb2.NetworkMode] = {
    "bridge": node_pb2.NETWORK_MODE_BRIDGE,
    "host-port": node_pb2.NETWORK_MODE_HOST_PORT,
}


_POLICY_FROM_PB: dict[int, PullPolicy] = {
    run_pb2.PULL_POLICY_UNSPECIFIED: "missing",
    run_pb2.PULL_POLICY_MISSING: "missing",
    run_pb2.PULL_POLICY_ALWAYS: "always",
    run_pb2.PULL_POLICY_NEVER: "never",
}


_log = logging.getLogger(__name__)
_NS = 1_000_000_000


class BadAssignment(ValueError):
    """A StartContainer the agent cannot act on (e.g. unknown role)."""


def pull_policy_from_pb(value: int) -> PullPolicy:
    """The wire's PullPolicy; UNSPECIFIED (and anything unknown) is ``missing``."""
    return _POLICY_FROM_PB.get(value, "missing")


def credentials_from_pb(creds: Iterable[agent_pb2.RegistryCredential]) -> tuple[RegistryAuth, ...]:
    """RegistryCredential messages as :class:`RegistryAuth` (entries without a registry dropped)."""
    return tuple(
        RegistryAuth(c.registry, c.username, c.password) for c in creds if c.registry.strip()
    )


def spec_from_start(msg: agent_pb2.StartContainer) -> ContainerSpec:
    """Build a :class:`ContainerSpec` from a StartContainer assignment."""
    role = _ROLE_FROM_PB.get(msg.role)
    if role is None:
        raise BadAssignment(f"container {msg.container_name}: unknown role {msg.role}")
    if not msg.container_name or not msg.image:
        raise BadAssignment("StartContainer needs container_name and image")
    return ContainerSpec(
        run_id=msg.run_id,
        role=role,
        replica=msg.replica,
        name=msg.container_name,
        hostname=msg.hostname or msg.container_name,
        image=msg.image,
        command=list(msg.command),
        args=list(msg.args),
        working_dir=msg.working_dir,
        env=dict(msg.env),
        cpu_limit_millis=msg.cpu_limit_millis,
        memory_limit_bytes=msg.memory_limit_bytes,
        shm_size_bytes=max(0, msg.shm_size_bytes),
        restart_always=msg.restart_always,
        endpoints={e.name: e.port for e in msg.endpoints},
        generation=msg.generation,
        hosts=dict(msg.hosts),
        gpu_devices=tuple(msg.gpu_devices),
        pull_policy=pull_policy_from_pb(msg.pull_policy),
        registry_credentials=credentials_from_pb(msg.registry_credentials),
        cluster_id=msg.cluster_id,
        buffers=buffers_from_pb(msg.buffers),
    )


def start_from_pb(msg: agent_pb2.StartContainer) -> ContainerSpec | None:
    """:func:`spec_from_start`, or ``None`` (logged) for an assignment the agent
    cannot act on."""
    try:
        return spec_from_start(msg)
    except BadAssignment as exc:
        log(_log, logging.WARNING, "bad_assignment", error=exc)
        return None


def buffers_from_pb(pipes: Iterable[agent_pb2.BufferPipe]) -> tuple[BufferPipe, ...]:
    """BufferPipe messages as :class:`~agent.runtime.BufferPipe`.

    A name that is not a plain file name would put a FIFO outside the run's
    pipe directory, so the whole start is refused instead."""
    out: list[BufferPipe] = []
    seen: set[str] = set()
    for p in pipes:
        if not p.name or p.name in (".", "..") or "/" in p.name or "\\0" in p.name:
            raise BadAssignment(f"buffer name {p.name!r} is not a file name")
        if p.name in seen:
            raise BadAssignment(f"buffer {p.name!r} is named twice")
        if not p.access_url:
            raise BadAssignment(f"buffer {p.name!r} has no access URL")
        seen.add(p.name)
        out.append(BufferPipe(p.name, p.output, p.buffer_id, p.access_url, p.ca_pem))
    return tuple(out)


@dataclass(frozen=True)
class Status:
    """The agent's last word about one container (what ContainerStatus carries).

    Comparing two ``Status`` values tells whether anything worth sending changed.
    """

    run_id: int
    role: Role
    replica: int
    name: str
    state: WireState
    ready: bool = False
    exit_code: int | None = None
    message: str = ""
    endpoints: tuple[tuple[str, str], ...] = field(default=())
    """(endpoint name, address) pairs, set once a worker is ready."""
    generation: int = 0
    """The placement generation the container was started with."""
    host_ip: str = ""
    """For a ready worker: the IP other containers reach it at."""
    image_digest: str = ""
    """Digest of the container's image, once known."""
    pull_bytes_done: int = 0
    """While pulling: bytes fetched (0 when Podman does not say)."""
    pull_bytes_total: int = 0
    """While pulling: bytes in all (0 when Podman does not say)."""
    cluster_id: str = ""
    """The container's cluster (label ``muster.cluster``; "" without one)."""
    buffer_error: str = ""
    """A job with buffers: what went wrong with a copy ("" while none did)."""

    def to_pb(self) -> agent_pb2.ContainerStatus:
        """Render as a ContainerStatus stamped with the current time."""
        time = Timestamp()
        time.GetCurrentTime()
        msg = agent_pb2.ContainerStatus(
            run_id=self.run_id,
            role=ROLE_TO_PB[self.role],
            replica=self.replica,
            container_name=self.name,
            state=STATE_TO_PB[self.state],
            ready=self.ready,
            message=self.message,
            endpoints=[agent_pb2.EndpointAddress(name=n, address=a) for n, a in self.endpoints],
            time=time,
            generation=self.generation,
            host_ip=self.host_ip,
            image_digest=self.image_digest,
            pull_bytes_done=self.pull_bytes_done,
            pull_bytes_total=self.pull_bytes_total,
            cluster_id=self.cluster_id,
            buffer_error=self.buffer_error,
        )
        if self.exit_code is not None:
            msg.exit_code = self.exit_code
        return msg


def addresses(targets: list[EndpointTarget]) -> tuple[tuple[str, str], ...]:
    """(name, address) pairs for :attr:`Status.endpoints`."""
    return tuple((t.name, t.address) for t in targets)


@dataclass(frozen=True)
class PullRequest:
    """The control plane asks for an image on this node (PullImage)."""

    request_id: str
    image: str
    policy: PullPolicy
    credentials: tuple[RegistryAuth, ...] = ()

    @classmethod
    def from_pb(cls, msg: agent_pb2.PullImage) -> PullRequest:
        """From a PullImage message."""
        return cls(
            msg.request_id,
            msg.image,
            pull_policy_from_pb(msg.policy),
            credentials_from_pb(msg.registry_credentials),
        )


@dataclass(frozen=True)
class PullAnswer:
    """The agent's answer to a :class:`PullRequest` (ImagePulled)."""

    request_id: str
    image: str
    digest: str = ""
    pulled: bool = False
    error: str = ""

    def to_pb(self) -> agent_pb2.ConnectRequest:
        """As an ImagePulled message on the stream."""
        answer = agent_pb2.ImagePulled(
            request_id=self.request_id,
            image=self.image,
            digest=self.digest,
            pulled=self.pulled,
            error=self.error,
        )
        return agent_pb2.ConnectRequest(image_pulled=answer)


@dataclass(frozen=True)
class ImagesAnswer:
    """The agent's answer to ListImages (ImagesListed)."""

    request_id: str
    images: tuple[ImageSummary, ...] = ()

    def to_pb(self) -> agent_pb2.ConnectRequest:
        """As an ImagesListed message on the stream."""
        answer = agent_pb2.ImagesListed(request_id=self.request_id)
        for image in self.images:
            answer.images.append(
                agent_pb2.NodeImage(
                    tags=list(image.tags), digest=image.digest, size_bytes=image.size_bytes
                )
            )
        return agent_pb2.ConnectRequest(images_listed=answer)


@dataclass(frozen=True)
class LogEntry:
    """One numbered line (or part of a line) of a container's output."""

    run_id: int
    role: Role
    replica: int
    stream: LogStreamName
    sequence: int
    text: str
    time_ns: int
    partial: bool = False


@dataclass
class LogBatch:
    """Log entries that go out together (a LogBatch message)."""

    entries: list[LogEntry] = field(default_factory=list)

    def to_pb(self) -> agent_pb2.LogBatch:
        """As a LogBatch message (``batch_id`` is the connection's to set)."""
        batch = agent_pb2.LogBatch()
        for e in self.entries:
            entry = batch.entries.add(
                run_id=e.run_id,
                role=ROLE_TO_PB[e.role],
                replica=e.replica,
                stream=STREAM_TO_PB[e.stream],
                sequence=e.sequence,
                partial=e.partial,
            )
            try:
                entry.text = e.text
            except ValueError:  # lone surrogates cannot go on the wire
                entry.text = e.text.encode("utf-8", "replace").decode("utf-8")
            entry.time.seconds, entry.time.nanos = divmod(e.time_ns, _NS)
        return batch
