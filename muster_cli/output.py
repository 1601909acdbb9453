"""Rendering resources for people (tables) and machines (JSON/YAML, Tyger camelCase)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import run_pb2 as rpb

FORMATS = ("table", "json", "yaml")


def enum_text(value: str) -> str:
    """`CODESPEC_KIND_WORKER` -> `worker`; `RUN_STATUS_PENDING` -> `Pending`."""
    for prefix, style in (
        ("CODESPEC_KIND_", str.lower),
        ("RUN_STATUS_", str.capitalize),
        ("NODE_STATUS_", lambda s: "".join(p.capitalize() for p in s.split("_"))),
        ("CONTAINER_STATE_", str.lower),
        ("REPLICA_ROLE_", str.lower),
        ("NETWORK_MODE_", lambda s: s.lower().replace("_", "-")),
        ("LOG_STREAM_", str.lower),
        ("PULL_POLICY_", str.lower),
    ):
        if value.startswith(prefix):
            return style(value[len(prefix) :])
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v != {}}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and value.isupper() and "_" in value:
        return enum_text(value)
    return value


def to_dict(msg: Message) -> dict[str, Any]:
    """Protobuf message -> dict with camelCase names and readable enum values."""
    return _clean(json_format.MessageToDict(msg, preserving_proto_field_name=False))


def dump(data: Any, fmt: str) -> str:
    """Serialize for -o json / -o yaml."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml  # only here: 10 ms of every command's start otherwise

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def human_cpu(millis: int) -> str:
    """Millicores for a table cell: 1500 -> 1.5, 250 -> 250m."""
    return (
        f"{millis // 1000}"
        if millis % 1000 == 0
        else (f"{millis / 1000:g}" if millis % 100 == 0 else f"{millis}m")
    )


def human_memory(value: int) -> str:
    """Bytes for a table cell, with binary suffixes."""
    for suffix, unit in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= unit:
            text = f"{value / unit:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(value)


def human_bytes(value: int) -> str:
    """Bytes for progress lines and tables, with decimal units as registries
    and Podman print them: 45 MB, 1.2 GB, 512 B."""
    for suffix, unit in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if value >= unit:
            number = value / unit
            text = f"{number:.0f}" if number >= 10 else f"{number:.1f}".removesuffix(".0")
            return f"{text} {suffix}"
    return f"{value} B"


def when(ts: Timestamp) -> str:
    """A timestamp as `2026-11-30T12:00:00Z`, or `-` when it is unset."""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts.seconds else "-"


# -- Tyger's JSON shapes ---------------------------------------------------------
# Written from Tyger's model (cli/internal/controlplane/model): numeric run ids,
# quantities as strings, a run's codespec as the codespec object the run
# resolved (a string reference only where a file wrote one), empty fields left
# out. muster's extras (pullPolicy, replicas, events) are fields Tyger's
# parsers ignore.


def _time(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def _omit_empty(doc: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k in keep or v not in (None, "", [], {})}


def codespec_dict(spec: Any, system: bool = True) -> dict[str, Any]:
    """A codespec as Tyger prints it; `system` adds name, version and createdAt."""
    res = spec.resources
    resources = _omit_empty(
        {
            "requests": _omit_empty({"cpu": res.requests.cpu, "memory": res.requests.memory}),
            "limits": _omit_empty({"cpu": res.limits.cpu, "memory": res.limits.memory}),
            "gpu": str(res.gpu) if res.gpu else None,
            "shm": res.shm,
        }
    )
    kind = "worker" if spec.kind == 2 else "job"
    doc: dict[str, Any] = {"kind": kind}
    if system:
        doc.update(name=spec.name, version=spec.version or None, createdAt=_time(spec.created_at))
    doc.update(
        image=spec.image,
        command=list(spec.command),
        args=list(spec.args),
        workingDir=spec.working_dir,
        env=dict(spec.env),
        resources=resources,
        maxReplicas=spec.max_replicas if spec.HasField("max_replicas") else None,
    )
    if kind == "job":
        doc["buffers"] = _omit_empty(
            {"inputs": list(spec.buffers.inputs), "outputs": list(spec.buffers.outputs)}
        )
    else:
        doc["endpoints"] = dict(spec.endpoints)
    return {"kind": kind, **_omit_empty(doc)}


def _target_dict(target: Any, role: str) -> dict[str, Any]:
    named = target.codespec.WhichOneof("reference") == "named"
    resolved = target.resolved_codespec
    if resolved.image:
        codespec: Any = codespec_dict(resolved, system=named)
    elif named:
        codespec = target.codespec.named
    else:
        codespec = codespec_dict(target.codespec.inline, system=False)
    doc: dict[str, Any] = {
        "codespec": codespec,
        "nodePool": target.node_pool,
        "replicas": target.replicas if target.HasField("replicas") else 1,
    }
    if role == "job":
        doc.update(tags=dict(target.tags), bufferTtl=target.buffer_ttl)
    if target.restart_policy == rpb.RESTART_POLICY_ALWAYS:
        doc["restartPolicy"] = "Always"  # muster's extra; absent means Never
    return _omit_empty(doc)


def run_metadata(run: Any) -> dict[str, Any]:
    """Tyger's RunMetadata: what `run watch` prints without --full-resource."""
    return _omit_empty(
        {
            "id": run.id,
            "status": enum_text(_enum_name(run, "status")),
            "statusReason": run.status_reason,
            "runningCount": run.running_count,
            "createdAt": _time(run.created_at),
            "startedAt": _time(run.started_at),
            "finishedAt": _time(run.finished_at),
            "tags": dict(run.tags),
        },
        keep=("runningCount",),
    )


def run_dict(run: Any) -> dict[str, Any]:
    """A run as Tyger prints it, then muster's extras."""
    doc: dict[str, Any] = {
        "id": run.id,
        "eTag": run.etag,
        "status": enum_text(_enum_name(run, "status")),
        "statusReason": run.status_reason,
        "runningCount": run.running_count,
        "createdAt": _time(run.created_at),
        "startedAt": _time(run.started_at),
        "finishedAt": _time(run.finished_at),
        "job": _omit_empty({**_target_dict(run.job, "job"), "buffers": dict(run.buffers)}),
        "worker": _target_dict(run.worker, "worker") if run.HasField("worker") else None,
        "timeoutSeconds": run.timeout_seconds if run.HasField("timeout_seconds") else None,
        "cluster": run.cluster,
        "tags": dict(run.tags),
        "bufferAccessTtl": run.buffer_access_ttl,
        "pullPolicy": enum_text(_enum_name(run, "pull_policy")) if run.pull_policy else None,
        "replicas": [to_dict(r) for r in run.replicas],
        "events": [to_dict(e) for e in run.events],
    }
    return _omit_empty(doc, keep=("runningCount",))


def _enum_name(msg: Message, field: str) -> str:
    descriptor = msg.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None, f"{field} is not an enum field"
    return descriptor.values_by_number[getattr(msg, field)].name
