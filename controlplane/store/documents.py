"""JSON documents for runs and nodes: the stored form, shared by every backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import from_document, to_document
from controlplane.core.nodes import Node
from controlplane.core.runs import Event, Replica, Run, Target
from controlplane.core.tyger import TygerFields


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _at(value: str) -> datetime:
    """A time every document has (run_to_doc writes it from a set field)."""
    return datetime.fromisoformat(value)


def _target(t: Target) -> dict[str, Any]:
    return {
        "codespec": {
            **to_document(t.codespec),
            "name": t.codespec.name,
            "version": t.codespec.version,
            "createdAt": _ts(t.codespec.created_at),
        },
        "reference": t.reference,
        "nodePool": t.node_pool,
        "replicas": t.replicas,
        **({"restart": True} if t.restart else {}),
    }


def _target_from(doc: dict[str, Any]) -> Target:
    spec = doc["codespec"]
    return Target(
        codespec=from_document(spec["name"], spec, spec["version"], _dt(spec["createdAt"])),
        reference=doc["reference"],
        node_pool=doc["nodePool"],
        replicas=doc["replicas"],
        restart=bool(doc.get("restart", False)),
    )


def run_to_doc(run: Run) -> dict[str, Any]:
    """Run -> JSON-ready dict."""
    return {
        "id": run.id,
        "job": _target(run.job),
        "worker": _target(run.worker) if run.worker else None,
        "createdAt": _ts(run.created_at),
        "timeoutSeconds": run.timeout_seconds,
        "tags": run.tags,
        "status": run.status,
        "statusReason": run.status_reason,
        "startedAt": _ts(run.started_at),
        "finishedAt": _ts(run.finished_at),
        "placedAt": _ts(run.placed_at),
        "generation": run.generation,
        "replicas": [
            {
                "role": r.role,
                "index": r.index,
                "node": r.node,
                "state": r.state,
                "ready": r.ready,
                "exitCode": r.exit_code,
                "message": r.message,
                "addresses": r.addresses,
                "hostIp": r.host_ip,
                "gpuDevices": list(r.gpu_devices),
                "imageDigest": r.image_digest,
                "pullBytesDone": r.pull_bytes_done,
                "pullBytesTotal": r.pull_bytes_total,
                "startedAt": _ts(r.started_at),
            }
            for r in run.replicas
        ],
        "events": [{"time": _ts(e.time), "message": e.message} for e in run.events],
        "pullPolicy": run.pull_policy,
        "cluster": run.cluster,
        "tyger": run.tyger.to_doc(),
        "buffers": dict(run.buffers),
    }


def run_from_doc(doc: dict[str, Any]) -> Run:
    """Inverse of run_to_doc."""
    return Run(
        id=doc["id"],
        job=_target_from(doc["job"]),
        worker=_target_from(doc["worker"]) if doc["worker"] else None,
        created_at=_at(doc["createdAt"]),
        timeout_seconds=doc["timeoutSeconds"],
        tags=dict(doc["tags"]),
        status=doc["status"],
        status_reason=doc["statusReason"],
        started_at=_dt(doc["startedAt"]),
        finished_at=_dt(doc["finishedAt"]),
        placed_at=_dt(doc["placedAt"]),
        generation=doc.get("generation", 0),
        replicas=[
            Replica(
                role=r["role"],
                index=r["index"],
                node=r["node"],
                state=r["state"],
                ready=r["ready"],
                exit_code=r["exitCode"],
                message=r["message"],
                addresses=dict(r["addresses"]),
                host_ip=r.get("hostIp", ""),
                gpu_devices=tuple(r.get("gpuDevices", ())),
                # Images came later: older documents load without digest or clock.
                image_digest=r.get("imageDigest", ""),
                pull_bytes_done=r.get("pullBytesDone", 0),
                pull_bytes_total=r.get("pullBytesTotal", 0),
                started_at=_dt(r.get("startedAt")),
            )
            for r in doc["replicas"]
        ],
        events=[Event(_at(e["time"]), e["message"]) for e in doc["events"]],
        pull_policy=doc.get("pullPolicy"),  # None: unspecified, the control plane's default
        cluster=doc.get("cluster", ""),  # "": stored before cluster ids (legacy names)
        tyger=TygerFields.from_doc(doc.get("tyger")),
        buffers=dict(doc.get("buffers", {})),  # runs stored before buffers in runs have none
    )


def node_to_doc(node: Node) -> dict[str, Any]:
    """Node -> JSON-ready dict."""
    cap = node.allocatable
    return {
        "name": node.name,
        "pools": list(node.pools),
        "allocatable": [cap.cpu_millis, cap.memory_bytes, cap.gpus],
        "labels": node.labels,
        "gpuDevices": list(node.gpu_devices),
        "advertiseAddress": node.advertise_address,
        "agentVersion": node.agent_version,
        "networkMode": node.network_mode,
        "networkName": node.network_name,
        "registeredAt": _ts(node.registered_at),
        "lastHeartbeat": _ts(node.last_heartbeat),
        "status": node.status,
        "cordoned": node.cordoned,
        "draining": node.draining,
        "drainDeadline": _ts(node.drain_deadline),
        "drainedAt": _ts(node.drained_at),
    }


def node_from_doc(doc: dict[str, Any]) -> Node:
    """Inverse of node_to_doc."""
    return Node(
        name=doc["name"],
        pools=tuple(doc["pools"]),
        allocatable=Capacity(*doc["allocatable"]),
        labels=dict(doc["labels"]),
        gpu_devices=tuple(doc.get("gpuDevices", ())),
        advertise_address=doc["advertiseAddress"],
        agent_version=doc["agentVersion"],
        network_mode=doc["networkMode"],
        network_name=doc["networkName"],
        registered_at=_dt(doc["registeredAt"]),
        last_heartbeat=_dt(doc["lastHeartbeat"]),
        status=doc["status"],
        # Maintenance came later: documents written before it load as schedulable.
        cordoned=doc.get("cordoned", False),
        draining=doc.get("draining", False),
        drain_deadline=_dt(doc.get("drainDeadline")),
        drained_at=_dt(doc.get("drainedAt")),
    )
