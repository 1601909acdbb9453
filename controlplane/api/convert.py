"""Protobuf <-> domain translation. No decisions are made here."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.core.codespec import Buffers, Codespec, Quantities, Resources
from muster.v1 import codespec_pb2 as pb

KIND_TO_PB = {"job": pb.CODESPEC_KIND_JOB, "worker": pb.CODESPEC_KIND_WORKER}
KIND_FROM_PB = {
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


def from_timestamp(ts: Timestamp) -> datetime:
    """Timestamp -> aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)


def _quantities(q: pb.ResourceQuantities) -> Quantities:
    return Quantities(cpu=q.cpu or None, memory=q.memory or None)


def codespec_from_pb(msg: pb.Codespec, name: str | None = None) -> Codespec:
    """Proto codespec -> domain codespec (unvalidated)."""
    return Codespec(
        name=name if name is not None else msg.name,
        kind=KIND_FROM_PB.get(msg.kind, "job"),  # type: ignore[arg-type]
        image=msg.image,
        command=tuple(msg.command),
        args=tuple(msg.args),
        working_dir=msg.working_dir or None,
        env=dict(msg.env),
        resources=Resources(
            _quantities(msg.resources.requests),
            _quantities(msg.resources.limits),
            msg.resources.gpu,
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
        ),
        buffers=pb.Buffers(inputs=list(spec.buffers.inputs), outputs=list(spec.buffers.outputs)),
        endpoints=spec.endpoints,
        created_at=timestamp(spec.created_at),
    )
    if spec.max_replicas is not None:
        msg.max_replicas = spec.max_replicas
    return msg
