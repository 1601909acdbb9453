"""Protobuf <-> domain translation. No decisions are made here."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Buffers, Codespec, Kind, Quantities, Resources
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import InvalidArgument
from controlplane.core.images import Credential, NodeImage, NodeImages, NodePull, PullPolicy
from controlplane.core.logs import LogLine, StoredLine
from controlplane.core.nodes import NetworkMode, Node
from controlplane.core.runs import ContainerState, Observation, Role, Run, Target, hostname
from controlplane.core.runs import Status as RunStatus
from controlplane.core.tyger import TygerFields, etag_of
from controlplane.services.orchestrator import PullOrder, Report
from controlplane.services.requests import RunRequest, TargetRequest
from muster.v1 import agent_pb2 as agent_pb
from muster.v1 import codespec_pb2 as pb
from muster.v1 import image_pb2 as image_pb
from muster.v1 import node_pb2 as node_pb
from muster.v1 import run_pb2 as run_pb

_V = TypeVar("_V")

KIND_TO_PB = {"job": pb.CODESPEC_KIND_JOB, "worker": pb.CODESPEC_KIND_WORKER}
KIND_FROM_PB: dict[int, Kind] = {
    pb.CODESPEC_KIND_UNSPECIFIED: "job",
    pb.CODESPEC_KIND_JOB: "job",
    pb.CODESPEC_KIND_WORKER: "worker",
}


def timestamp(value: datetime | None) -> Timestamp | None:
    """datetime -> Timestamp (None stays None so the field stays unset)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31


def check_timestamp(ts: Timestamp, field: str) -> Timestamp:
    """Reject timestamps outside what protobuf allows (years 1-9999)."""
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "the timestamp is out of range (years 1 to 9999)")
    return ts


def from_timestamp(ts: Timestamp, field: str = "time") -> datetime:
    """Timestamp -> aware UTC datetime (InvalidArgument if out of range)."""
    return check_timestamp(ts, field).ToDatetime(tzinfo=UTC)


def _quantities(q: pb.ResourceQuantities) -> Quantities:
    return Quantities(cpu=q.cpu or None, memory=q.memory or None)


def codespec_from_pb(msg: pb.Codespec, name: str | None = None) -> Codespec:
    """Proto codespec -> domain codespec (unvalidated)."""
    return Codespec(
        name=name if name is not None else msg.name,
        kind=_known(KIND_FROM_PB, msg.kind, "kind"),
        image=msg.image,
        command=tuple(msg.command),
        args=tuple(msg.args),
        working_dir=msg.working_dir or None,
        env=dict(msg.env),
        resources=Resources(
            _quantities(msg.resources.requests),
            _quantities(msg.resources.limits),
            msg.resources.gpu,
            msg.resources.shm or None,
        ),
        max_replicas=msg.max_replicas if msg.HasField("max_replicas") else None,
        buffers=Buffers(tuple(msg.buffers.inputs), tuple(msg.buffers.outputs)),
        endpoints=dict(msg.endpoints),
    )


def codespec_to_pb(spec: Codespec) -> pb.Codespec:
    """Domain codespec -> proto codespec."""
    res = spec.resources
    msg = pb.Codespec(
        name=spec.name,
        version=spec.version,
        kind=KIND_TO_PB[spec.kind],
        image=spec.image,
        command=list(spec.command),
        args=list(spec.args),
        working_dir=spec.working_dir or "",
        env=spec.env,
        resources=pb.Resources(
            requests=pb.ResourceQuantities(
                cpu=res.requests.cpu or "", memory=res.requests.memory or ""
            ),
            limits=pb.ResourceQuantities(cpu=res.limits.cpu or "", memory=res.limits.memory or ""),
            gpu=res.gpu,
            shm=res.shm or "",
        ),
        buffers=pb.Buffers(inputs=list(spec.buffers.inputs), outputs=list(spec.buffers.outputs)),
        endpoints=spec.endpoints,
        created_at=timestamp(spec.created_at),
    )
    if spec.max_replicas is not None:
        msg.max_replicas = spec.max_replicas
    return msg


# -- runs ----------------------------------------------------------------------

STATUS_TO_PB: dict[str, run_pb.RunStatus] = {
    "Pending": run_pb.RUN_STATUS_PENDING,
    "Running": run_pb.RUN_STATUS_RUNNING,
    "Succeeded": run_pb.RUN_STATUS_SUCCEEDED,
    "Failed": run_pb.RUN_STATUS_FAILED,
    "Canceled": run_pb.RUN_STATUS_CANCELED,
}
STATUS_FROM_PB = cast(dict[int, RunStatus], {v: k for k, v in STATUS_TO_PB.items()})
ROLE_TO_PB: dict[str, run_pb.ReplicaRole] = {
    "job": run_pb.REPLICA_ROLE_JOB,
    "worker": run_pb.REPLICA_ROLE_WORKER,
}
ROLE_FROM_PB = cast(dict[int, Role], {v: k for k, v in ROLE_TO_PB.items()})
STATE_TO_PB: dict[str, run_pb.ContainerState] = {
    "pending": run_pb.CONTAINER_STATE_PENDING,
    "pulling": run_pb.CONTAINER_STATE_PULLING,
    "creating": run_pb.CONTAINER_STATE_CREATING,
    "running": run_pb.CONTAINER_STATE_RUNNING,
    "exited": run_pb.CONTAINER_STATE_EXITED,
    "failed": run_pb.CONTAINER_STATE_FAILED,
    "removed": run_pb.CONTAINER_STATE_REMOVED,
}
STATE_FROM_PB = cast(dict[int, ContainerState], {v: k for k, v in STATE_TO_PB.items()})
PULL_POLICY_TO_PB: dict[str, run_pb.PullPolicy] = {
    "missing": run_pb.PULL_POLICY_MISSING,
    "always": run_pb.PULL_POLICY_ALWAYS,
    "never": run_pb.PULL_POLICY_NEVER,
}
PULL_POLICY_FROM_PB = cast(dict[int, PullPolicy], {v: k for k, v in PULL_POLICY_TO_PB.items()})
RESTART_FROM_PB = {
    run_pb.RESTART_POLICY_UNSPECIFIED: False,
    run_pb.RESTART_POLICY_NEVER: False,
    run_pb.RESTART_POLICY_ALWAYS: True,
}


def pull_policy_from_pb(value: int, field: str) -> PullPolicy | None:
    """PullPolicy -> domain; UNSPECIFIED -> None; an unknown number is refused."""
    if value == run_pb.PULL_POLICY_UNSPECIFIED:
        return None
    if value not in PULL_POLICY_FROM_PB:
        raise InvalidArgument(field, f"{value} is not a pull policy (missing, always or never)")
    return PULL_POLICY_FROM_PB[value]


def statuses_from_pb(values: Collection[int]) -> frozenset[RunStatus]:
    """RunStatus values -> domain statuses; an unknown number is refused."""
    statuses = frozenset(STATUS_FROM_PB[s] for s in values if s in STATUS_FROM_PB)
    if len(statuses) != len(set(values)):
        raise InvalidArgument("statuses", "unknown status value")
    return statuses


def _known(table: Mapping[Any, _V], value: int, field: str) -> _V:
    """An enum value the control plane knows, or InvalidArgument (never a guess)."""
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


def target_request_from_pb(msg: run_pb.RunCodeTarget, role: str) -> TargetRequest:
    """RunCodeTarget -> TargetRequest."""
    which = msg.codespec.WhichOneof("reference")
    return TargetRequest(
        reference=msg.codespec.named if which == "named" else "",
        inline=codespec_from_pb(msg.codespec.inline) if which == "inline" else None,
        node_pool=msg.node_pool,
        replicas=msg.replicas if msg.HasField("replicas") else None,
        restart=_known(RESTART_FROM_PB, msg.restart_policy, f"{role}.restartPolicy"),
    )


def run_request_from_pb(msg: run_pb.Run) -> RunRequest:
    """The user-settable fields of a Run message."""
    return RunRequest(
        job=target_request_from_pb(msg.job, "job"),
        worker=target_request_from_pb(msg.worker, "worker") if msg.HasField("worker") else None,
        timeout_seconds=msg.timeout_seconds if msg.HasField("timeout_seconds") else None,
        tags=dict(msg.tags),
        pull_policy=pull_policy_from_pb(msg.pull_policy, "pull_policy"),
        tyger=TygerFields(
            cluster=msg.cluster,
            buffer_access_ttl=msg.buffer_access_ttl,
            job_tags=dict(msg.job.tags),
            job_buffer_ttl=msg.job.buffer_ttl,
        ),
        buffers=dict(msg.buffers),
    )


def _resolved_pb(t: Target) -> pb.Codespec:
    """The target's codespec snapshot as a message, converted once per target
    (callers copy it into theirs)."""
    cached = t.derived.get("codespec")
    if not isinstance(cached, pb.Codespec):
        cached = t.derived["codespec"] = codespec_to_pb(t.codespec)
    return cached


def _target_to_pb(t: Target, fields: TygerFields | None = None) -> run_pb.RunCodeTarget:
    resolved = _resolved_pb(t)
    ref = (
        run_pb.CodespecRef(named=t.reference)
        if t.reference
        else run_pb.CodespecRef(inline=resolved)
    )
    return run_pb.RunCodeTarget(
        codespec=ref,
        node_pool=t.node_pool,
        replicas=t.replicas,
        resolved_codespec=resolved,
        tags=fields.job_tags if fields else {},
        buffer_ttl=fields.job_buffer_ttl if fields else "",
        restart_policy=run_pb.RESTART_POLICY_ALWAYS
        if t.restart
        else run_pb.RESTART_POLICY_UNSPECIFIED,
    )


def run_message(run: Run, with_events: bool = True) -> run_pb.Run:
    """The Run message of `run`, built once per run object and shared: put it
    into a reply (which copies it), never change it. Runs handed out are never
    changed, so a run read, listed and watched many times is converted once."""
    key = "pb" if with_events else "pb-brief"
    cached = run.derived.get(key)
    if not isinstance(cached, run_pb.Run):
        cached = run.derived[key] = run_to_pb(run, with_events)
    return cached


def run_to_pb(run: Run, with_events: bool = True) -> run_pb.Run:
    """Domain run -> Run message (a new one, the caller's to change)."""
    msg = run_pb.Run(
        id=run.id,
        job=_target_to_pb(run.job, run.tyger),
        timeout_seconds=run.timeout_seconds,
        tags=run.tags,
        status=STATUS_TO_PB[run.status],
        status_reason=run.status_reason,
        running_count=run.running_count,
        created_at=timestamp(run.created_at),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        pull_policy=(
            run_pb.PULL_POLICY_UNSPECIFIED
            if run.pull_policy is None
            else PULL_POLICY_TO_PB[run.pull_policy]
        ),
        cluster=run.tyger.cluster,
        buffer_access_ttl=run.tyger.buffer_access_ttl,
        etag=etag_of(run),
        buffers=run.buffers,
    )
    if run.worker is not None:
        msg.worker.CopyFrom(_target_to_pb(run.worker))
    for r in run.replicas:
        replica = msg.replicas.add(
            role=ROLE_TO_PB[r.role],
            index=r.index,
            node_name=r.node or "",
            state=STATE_TO_PB[r.state],
            ready=r.ready,
            hostname=hostname(run.id, r.role, r.index),
            container_name=run.container_name(r.role, r.index),
            endpoint_addresses=r.addresses,
            message=r.message,
            gpu_devices=list(r.gpu_devices),
            image_digest=r.image_digest,
            pull_bytes_done=r.pull_bytes_done,
            pull_bytes_total=r.pull_bytes_total,
        )
        if r.exit_code is not None:
            replica.exit_code = r.exit_code
    if with_events:
        for e in run.events:
            msg.events.add(time=timestamp(e.time), message=e.message)
    return msg


# -- nodes and agents ----------------------------------------------------------

NODE_STATUS_TO_PB = {
    "Ready": node_pb.NODE_STATUS_READY,
    "NotReady": node_pb.NODE_STATUS_NOT_READY,
    "Lost": node_pb.NODE_STATUS_LOST,
}
MODE_TO_PB = {"bridge": node_pb.NETWORK_MODE_BRIDGE, "host-port": node_pb.NETWORK_MODE_HOST_PORT}
MODE_FROM_PB: dict[int, NetworkMode] = {
    node_pb.NETWORK_MODE_UNSPECIFIED: "bridge",
    node_pb.NETWORK_MODE_BRIDGE: "bridge",
    node_pb.NETWORK_MODE_HOST_PORT: "host-port",
}


def capacity_to_pb(cap: Capacity) -> node_pb.Capacity:
    """Capacity -> message."""
    return node_pb.Capacity(cpu_millis=cap.cpu_millis, memory_bytes=cap.memory_bytes, gpus=cap.gpus)


def node_to_pb(
    node: Node, allocated: Capacity, replicas: int, gpus_in_use: Collection[str] = ()
) -> node_pb.Node:
    """Domain node -> Node message (`gpus_in_use`: its devices held by active runs)."""
    return node_pb.Node(
        name=node.name,
        pools=list(node.pools),
        labels=node.labels,
        status=NODE_STATUS_TO_PB[node.status],
        allocatable=capacity_to_pb(node.allocatable),
        allocated=capacity_to_pb(allocated),
        last_heartbeat=timestamp(node.last_heartbeat),
        advertise_address=node.advertise_address,
        agent_version=node.agent_version,
        network_mode=MODE_TO_PB[node.network_mode],
        registered_at=timestamp(node.registered_at),
        replica_count=replicas,
        cordoned=node.cordoned,
        drain_deadline=timestamp(node.drain_deadline),
        draining=node.draining,
        drained_at=timestamp(node.drained_at),
        gpu_devices=list(node.gpu_devices),
        gpu_devices_in_use=[d for d in node.gpu_devices if d in gpus_in_use]
        + sorted(set(gpus_in_use) - set(node.gpu_devices)),
    )


def node_from_register(msg: agent_pb.Register) -> Node:
    """Register message -> domain node."""
    cap = msg.allocatable
    return Node(
        name=msg.node_name,
        pools=tuple(msg.pools),
        allocatable=Capacity(cap.cpu_millis, cap.memory_bytes, cap.gpus),
        labels=dict(msg.labels),
        advertise_address=msg.advertise_address,
        agent_version=msg.agent_version,
        network_mode=_known(MODE_FROM_PB, msg.network_mode, "network_mode"),
        network_name=msg.network_name,
        instance_id=msg.instance_id,
        gpu_devices=tuple(msg.gpu_devices),
    )


def report_from_pb(msg: agent_pb.ContainerStatus) -> Report:
    """ContainerStatus -> Report; a role or state this control plane does not
    know (unset included) is InvalidArgument, never read as another."""
    if msg.pull_bytes_done < 0 or msg.pull_bytes_total < 0:
        raise InvalidArgument("pull_bytes", "byte counts cannot be negative")
    return Report(
        run_id=msg.run_id,
        observation=Observation(
            role=_known(ROLE_FROM_PB, msg.role, "role"),
            index=msg.replica,
            state=_known(STATE_FROM_PB, msg.state, "state"),
            ready=msg.ready,
            exit_code=msg.exit_code if msg.HasField("exit_code") else None,
            message=msg.message,
            addresses={e.name: e.address for e in msg.endpoints},
            generation=msg.generation,
            host_ip=msg.host_ip,
            image_digest=msg.image_digest,
            pull_bytes_done=msg.pull_bytes_done,
            pull_bytes_total=msg.pull_bytes_total,
            buffer_error=msg.buffer_error,
        ),
    )


def start_to_pb(spec: ContainerSpec) -> agent_pb.StartContainer:
    """ContainerSpec -> StartContainer."""
    return agent_pb.StartContainer(
        run_id=spec.run_id,
        role=ROLE_TO_PB[spec.role],
        replica=spec.index,
        container_name=spec.name,
        hostname=spec.hostname,
        image=spec.image,
        command=list(spec.command),
        args=list(spec.args),
        working_dir=spec.working_dir,
        env=spec.env,
        cpu_limit_millis=spec.cpu_limit_millis,
        memory_limit_bytes=spec.memory_limit_bytes,
        shm_size_bytes=spec.shm_size_bytes,
        restart_always=spec.restart_always,
        endpoints=[agent_pb.EndpointPort(name=k, port=v) for k, v in spec.endpoints.items()],
        generation=spec.generation,
        hosts=spec.hosts,
        gpu_devices=list(spec.gpu_devices),
        pull_policy=PULL_POLICY_TO_PB[spec.pull_policy],
        registry_credentials=credentials_to_pb(spec.registry_credentials),
        cluster_id=spec.cluster_id,
        buffers=[
            agent_pb.BufferPipe(
                name=p.name,
                output=p.output,
                buffer_id=p.buffer_id,
                access_url=p.access_url,
                ca_pem=p.ca_pem,
            )
            for p in spec.buffers
        ],
    )


def credentials_to_pb(creds: Collection[Credential]) -> list[agent_pb.RegistryCredential]:
    """Credentials -> messages (for the node that pulls, nowhere else)."""
    return [
        agent_pb.RegistryCredential(registry=c.registry, username=c.username, password=c.password)
        for c in creds
    ]


def pull_order_to_pb(order: PullOrder) -> agent_pb.PullImage:
    """PullOrder -> PullImage."""
    return agent_pb.PullImage(
        request_id=order.request_id,
        image=order.image,
        policy=PULL_POLICY_TO_PB[order.policy],
        registry_credentials=credentials_to_pb(order.credentials),
    )


def node_pull_from_pb(msg: agent_pb.ImagePulled) -> NodePull:
    """ImagePulled -> NodePull (the service fills in the node it came from)."""
    return NodePull("", digest=msg.digest, error=msg.error, pulled=msg.pulled)


def node_images_from_pb(msg: agent_pb.ImagesListed) -> NodeImages:
    """ImagesListed -> NodeImages (the service fills in the node it came from)."""
    return NodeImages(
        "",
        tuple(NodeImage(tuple(i.tags), i.digest, max(0, i.size_bytes)) for i in msg.images),
    )


def node_images_to_pb(images: NodeImages) -> image_pb.NodeImages:
    """NodeImages -> message."""
    return image_pb.NodeImages(
        node=images.node,
        images=[
            agent_pb.NodeImage(tags=list(i.tags), digest=i.digest, size_bytes=i.size_bytes)
            for i in images.images
        ],
        error=images.error,
    )


def node_pull_to_pb(result: NodePull) -> image_pb.NodePullResult:
    """NodePull -> message."""
    return image_pb.NodePullResult(
        node=result.node, digest=result.digest, error=result.error, pulled=result.pulled
    )


# -- logs ----------------------------------------------------------------------

STREAM_TO_PB = {"stdout": run_pb.LOG_STREAM_STDOUT, "stderr": run_pb.LOG_STREAM_STDERR}
STREAM_FROM_PB = {v: k for k, v in STREAM_TO_PB.items()}


def log_lines_from_pb(batch: agent_pb.LogBatch) -> list[LogLine]:
    """LogBatch -> lines (entries with an unknown role or stream are dropped)."""
    return [
        LogLine(
            run_id=e.run_id,
            role=ROLE_FROM_PB[e.role],
            replica=e.replica,
            stream=STREAM_FROM_PB[e.stream],
            sequence=e.sequence,
            time_ns=e.time.seconds * 1_000_000_000 + e.time.nanos,
            text=e.text,
            partial=e.partial,
        )
        for e in batch.entries
        if e.role in ROLE_FROM_PB and e.stream in STREAM_FROM_PB
    ]


def log_line_to_pb(stored: StoredLine, single_job: bool) -> run_pb.LogLine:
    """Stored line -> LogLine message."""
    ln = stored.line
    return run_pb.LogLine(
        time=Timestamp(seconds=ln.time_ns // 1_000_000_000, nanos=ln.time_ns % 1_000_000_000),
        role=ROLE_TO_PB[ln.role],
        replica=ln.replica,
        stream=STREAM_TO_PB[ln.stream],
        text=ln.text,
        source=ln.source(single_job),
        sequence=ln.sequence,
        partial=ln.partial,
    )
