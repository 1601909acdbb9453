"""How a run reads to a person: its status, a progress line, `muster run show`'s view."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from muster.v1 import run_pb2 as pb
from muster_cli.output import enum_text, human_bytes, table


def status_text(run: pb.Run) -> str:
    """`Pending`, `Failed`, ..."""
    return enum_text(pb.RunStatus.Name(run.status))


def bytes_progress(done: int, total: int) -> str:
    """'45 MB of 120 MB', '45 MB' (total unknown) or '' (nothing known)."""
    if total > 0:
        return f"{human_bytes(done)} of {human_bytes(total)}"
    return human_bytes(done) if done > 0 else ""


def pulling_text(run: pb.Run) -> str:
    """'pulling image on 2 of 3 workers (45 MB of 120 MB)', or '' when nothing pulls."""
    phrases, done, total = [], 0, 0
    for role, noun in ((pb.REPLICA_ROLE_WORKER, "workers"), (pb.REPLICA_ROLE_JOB, "job replicas")):
        replicas = [r for r in run.replicas if r.role == role]
        pulling = [r for r in replicas if r.state == pb.CONTAINER_STATE_PULLING]
        if not pulling:
            continue
        done += sum(r.pull_bytes_done for r in pulling)
        total += sum(r.pull_bytes_total for r in pulling)
        if role == pb.REPLICA_ROLE_JOB and len(replicas) == 1:
            phrases.append("pulling the job's image")
        else:
            phrases.append(f"pulling image on {len(pulling)} of {len(replicas)} {noun}")
    if not phrases:
        return ""
    amount = bytes_progress(done, total)
    return ", ".join(phrases) + (f" ({amount})" if amount else "")


def progress_line(run: pb.Run) -> str:
    """One line a person reads while a run progresses."""
    workers = [r for r in run.replicas if r.role == pb.REPLICA_ROLE_WORKER]
    ready = sum(1 for r in workers if r.ready)
    parts = [f"run {run.id}: {status_text(run)}"]
    if workers:
        parts.append(f"workers ready {ready}/{len(workers)}")
    pulling = pulling_text(run)
    if pulling and run.status not in TERMINAL:
        parts.append(pulling)
    if run.status_reason:
        parts.append(run.status_reason)
    return " - ".join(parts)


TERMINAL = (pb.RUN_STATUS_SUCCEEDED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_CANCELED)


def _time(ts: Any) -> str:
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else "-"


def _target_text(t: pb.RunCodeTarget) -> str:
    spec = t.resolved_codespec
    name = f"{spec.name} (version {spec.version})" if t.codespec.named else "(inline)"
    pool = f" in pool {t.node_pool}" if t.node_pool else ""
    return f"{name} x{t.replicas}{pool}"


def describe(r: pb.Run) -> str:
    """A person's view of a run: summary, replicas table, events (-o yaml has everything)."""
    lines = [f"run {r.id}: {status_text(r)}" + (f" - {r.status_reason}" if r.status_reason else "")]
    lines.append(f"  job:      {_target_text(r.job)}")
    if r.HasField("worker"):
        lines.append(f"  workers:  {_target_text(r.worker)}")
    lines.append(
        f"  created:  {_time(r.created_at)}   started: {_time(r.started_at)}   "
        f"finished: {_time(r.finished_at)}"
    )
    if r.tags:
        lines.append("  tags:     " + ", ".join(f"{k}={v}" for k, v in sorted(r.tags.items())))
    if r.pull_policy:
        lines.append(f"  pull:     {enum_text(pb.PullPolicy.Name(r.pull_policy))}")
    headers = ["REPLICA", "NODE", "STATE", "READY", "EXIT", "ADDRESSES"]
    gpus = any(rep.gpu_devices for rep in r.replicas)
    if gpus:
        headers.append("GPUS")
    headers.append("IMAGE DIGEST")
    rows = []
    for rep in r.replicas:
        role = "worker" if rep.role == pb.REPLICA_ROLE_WORKER else "job"
        state = enum_text(pb.ContainerState.Name(rep.state))
        amount = bytes_progress(rep.pull_bytes_done, rep.pull_bytes_total)
        if rep.state == pb.CONTAINER_STATE_PULLING and amount:
            state += f" ({amount})"
        row = [
            f"{role}-{rep.index}",
            rep.node_name or "-",
            state,
            "yes" if rep.ready else "no",
            rep.exit_code if rep.HasField("exit_code") else "-",
            " ".join(f"{k}={v}" for k, v in sorted(rep.endpoint_addresses.items())) or "-",
        ]
        if gpus:
            row.append(",".join(rep.gpu_devices) or "-")
        row.append(rep.image_digest or "-")
        rows.append(row)
    lines += ["", table(headers, rows), ""]
    lines.append("EVENTS")
    lines += [
        f"  {e.time.ToDatetime(tzinfo=UTC).strftime('%H:%M:%S.%f')[:-3]}  {e.message}"
        for e in r.events
    ]
    return "\n".join(lines)
