"""Protobuf <-> domain translation for codespecs and runs. No decisions are
made here. The tables and timestamps it builds on are in `convert_base`, the
node and agent conversions in `convert_agent`; both are re-exported here,
so `controlplane.api.convert` stays the one place adapters import from."""

from __future__ import annotations

from typing import Any

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from controlplane.api.convert_agent import log_lines_from_pb as log_lines_from_pb
from controlplane.api.convert_agent import log_lines_response as log_lines_response
from controlplane.api.convert_agent import node_from_register as node_from_register
from controlplane.api.convert_agent import node_images_from_pb as node_images_from_pb
from controlplane.api.convert_agent import node_images_to_pb as node_images_to_pb
from controlplane.api.convert_agent import node_pull_from_pb as node_pull_from_pb
from controlplane.api.convert_agent import node_pull_to_pb as node_pull_to_pb
from controlplane.api.convert_agent import node_to_pb as node_to_pb
from controlplane.api.convert_agent import pull_order_to_pb as pull_order_to_pb
from controlplane.api.convert_agent import report_from_pb as report_from_pb
from controlplane.api.convert_agent import start_to_pb as start_to_pb
from controlplane.api.convert_base import (
    KIND_FROM_PB,
    KIND_TO_PB,
    PULL_POLICY_TO_PB,
    RESTART_FROM_PB,
    ROLE_TO_PB,
    STATE_TO_PB,
    known,
)
from controlplane.api.convert_base import STATUS_TO_PB as STATUS_TO_PB
from controlplane.api.convert_base import check_timestamp as check_timestamp
from controlplane.api.convert_base import from_timestamp as from_timestamp
from controlplane.api.convert_base import pull_policy_from_pb as pull_policy_from_pb
from controlplane.api.convert_base import statuses_from_pb as statuses_from_pb
from controlplane.api.convert_base import timestamp as timestamp
from controlplane.core.codespec import Buffers, Codespec, Quantities, Resources
from controlplane.core.runs import Event, Replica, Run, Target, hostname
from controlplane.core.tyger import TygerFields, etag_of
from controlplane.services.run_requests import RunRequest, TargetRequest
from muster.v1 import codespec_pb2 as pb
from muster.v1 import run_pb2 as run_pb


def _quantities(q: pb.ResourceQuantities) -> Quantities:
    return Quantities(cpu=q.cpu or None, memory=q.memory or None)


def codespec_from_pb(msg: pb.Codespec, name: str | None = None) -> Codespec:
    """Proto codespec -> domain codespec (unvalidated)."""
    return Codespec(
        name=name if name is not None else msg.name,
        kind=known(KIND_FROM_PB, msg.kind, "kind"),
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


def target_request_from_pb(msg: run_pb.RunCodeTarget, role: str) -> TargetRequest:
    """RunCodeTarget -> TargetRequest."""
    which = msg.codespec.WhichOneof("reference")
    return TargetRequest(
        reference=msg.codespec.named if which == "named" else "",
        inline=codespec_from_pb(msg.codespec.inline) if which == "inline" else None,
        node_pool=msg.node_pool,
        replicas=msg.replicas if msg.HasField("replicas") else None,
        restart=known(RESTART_FROM_PB, msg.restart_policy, f"{role}.restartPolicy"),
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


def changing_fields(run: Run) -> dict[str, Any]:
    """The Run message's scalar fields that change during a run's life: the
    ones a partial WatchRun response always carries (convert_watch.py)."""
    return {
        "id": run.id,
        "status": STATUS_TO_PB[run.status],
        "status_reason": run.status_reason,
        "running_count": run.running_count,
        "started_at": timestamp(run.started_at),
        "finished_at": timestamp(run.finished_at),
        "etag": etag_of(run),
        "tags": run.tags,
    }


def run_to_pb(run: Run, with_events: bool = True) -> run_pb.Run:
    """Domain run -> Run message (a new one, the caller's to change)."""
    msg = run_pb.Run(
        job=_target_to_pb(run.job, run.tyger),
        timeout_seconds=run.timeout_seconds,
        created_at=timestamp(run.created_at),
        pull_policy=(
            run_pb.PULL_POLICY_UNSPECIFIED
            if run.pull_policy is None
            else PULL_POLICY_TO_PB[run.pull_policy]
        ),
        cluster=run.tyger.cluster,
        buffer_access_ttl=run.tyger.buffer_access_ttl,
        buffers=run.buffers,
        **changing_fields(run),
    )
    if run.worker is not None:
        msg.worker.CopyFrom(_target_to_pb(run.worker))
    for r in run.replicas:
        add_replica(msg.replicas, run, r)
    if with_events:
        add_events(msg.events, run.events)
    return msg


def add_replica(
    into: RepeatedCompositeFieldContainer[run_pb.Replica], run: Run, r: Replica
) -> run_pb.Replica:
    """Appends the Replica message of `r` (a replica of `run`) to `into`: the
    one replica conversion, for whole runs and WatchRun's partial ones alike."""
    replica = into.add(
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
    return replica


def add_events(into: RepeatedCompositeFieldContainer[run_pb.RunEvent], events: list[Event]) -> None:
    """Appends the RunEvent messages of `events` to `into`."""
    for e in events:
        into.add(time=timestamp(e.time), message=e.message)
