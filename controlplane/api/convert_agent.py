"""Protobuf <-> domain translation for nodes and what their agents send and
receive: registration, container reports and starts, image pulls and lists,
log lines. No decisions are made here."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from controlplane.api.convert_base import (
    MODE_FROM_PB,
    MODE_TO_PB,
    NODE_STATUS_TO_PB,
    PULL_POLICY_TO_PB,
    ROLE_FROM_PB,
    ROLE_TO_PB,
    STATE_FROM_PB,
    STREAM_FROM_PB,
    STREAM_TO_PB,
    known,
    timestamp,
)
from controlplane.core.capacity import Capacity
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import InvalidArgument
from controlplane.core.images import Credential, NodeImage, NodeImages, NodePull
from controlplane.core.logs import LogLine, StoredLine
from controlplane.core.nodes import Node
from controlplane.core.runs import Observation
from controlplane.services.orchestrator import PullOrder, Report
from muster.v1 import agent_pb2 as agent_pb
from muster.v1 import image_pb2 as image_pb
from muster.v1 import node_pb2 as node_pb
from muster.v1 import run_pb2 as run_pb


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
        network_mode=known(MODE_FROM_PB, msg.network_mode, "network_mode"),
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
            role=known(ROLE_FROM_PB, msg.role, "role"),
            index=msg.replica,
            state=known(STATE_FROM_PB, msg.state, "state"),
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


def log_lines_response(
    chunk: Sequence[StoredLine], single_job: bool, resume_after: int
) -> run_pb.GetRunLogsResponse:
    """One GetRunLogs reply: each line built in place in the reply (no
    LogLine or Timestamp made and then copied: reads of whole runs convert
    hundreds of thousands of lines, at half the cost this way)."""
    reply = run_pb.GetRunLogsResponse(resume_after=resume_after)
    add = reply.lines.add
    for stored in chunk:
        ln = stored.line
        message = add(
            role=ROLE_TO_PB[ln.role],
            replica=ln.replica,
            stream=STREAM_TO_PB[ln.stream],
            text=ln.text,
            source=ln.source(single_job),
            sequence=ln.sequence,
            partial=ln.partial,
        )
        message.time.seconds, message.time.nanos = divmod(ln.time_ns, 1_000_000_000)
    return reply
