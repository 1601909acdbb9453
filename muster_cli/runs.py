"""`muster run create|exec|show|watch|cancel|list|counts`."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
import grpc

from muster.common.timespan import TimeSpanError, format_timespan, is_timespan, timespan_seconds
from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc
from muster_cli.app import (
    CONTEXT,
    COUNT,
    INT32,
    POSITIVE,
    RUN_ID,
    AliasGroup,
    address,
    cli,
    comma_list,
    comma_pairs,
    format_option,
    key_values,
    server_option,
)
from muster_cli.client import (
    Reconnect,
    channel,
    collect_pages,
    fail,
    open_channel,
    with_retries,
)
from muster_cli.logs import stream_logs
from muster_cli.output import dump, enum_text, human_bytes, run_dict, run_metadata, table
from muster_cli.specfile import (
    PULL_POLICIES,
    RESTART_POLICIES,
    SpecError,
    load_run,
    time_span,
)
from muster_cli.timeparse import parse_duration, parse_since

STATUSES = ["Pending", "Running", "Succeeded", "Failed", "Canceled"]


def _reference(name: str, version: int | None) -> str:
    return f"{name}/versions/{version}" if version else name


def timeout_seconds(text: str) -> int:
    """--timeout as Tyger takes it (a Go duration, `1.5h`), or seconds; at least 1 s."""
    seconds = parse_duration(text, "--timeout")
    if not 1 <= seconds <= INT32:
        raise click.BadParameter(
            f"'{text}' is out of range (1s to 68 years)", param_hint="--timeout"
        )
    return seconds


def buffer_ttl(text: str) -> str:
    """--buffer-ttl as Tyger's TimeSpan (kept as written), or a duration with
    units (`90m`), written as a TimeSpan since job.bufferTtl is one."""
    try:
        if is_timespan(text):
            timespan_seconds(text)
            return text.strip()
    except TimeSpanError as exc:
        raise click.BadParameter(str(exc), param_hint="--buffer-ttl") from None
    if not any(c.isalpha() for c in text):
        raise click.BadParameter(f"'{text}' is not a time span", param_hint="--buffer-ttl")
    seconds = parse_duration(text, "--buffer-ttl")
    if seconds <= 0:
        raise click.BadParameter(f"'{text}' is not a positive lifetime", param_hint="--buffer-ttl")
    return format_timespan(seconds)


def build_run(file: str | None, flags: dict[str, Any]) -> pb.Run:
    """The Run message from a file (optional) with flags on top, as Tyger
    merges them: --tag adds to the file's tags, the other flags replace."""
    run = load_run(file) if file else pb.Run()
    if flags["codespec"]:
        run.job.codespec.named = _reference(flags["codespec"], flags["version"])
    elif flags["version"]:
        raise click.BadParameter("--version needs --codespec", param_hint="--version")
    if flags["replicas"] is not None:
        run.job.replicas = flags["replicas"]
    if flags["node_pool"]:
        run.job.node_pool = flags["node_pool"]
    if flags["worker_codespec"]:
        run.worker.codespec.named = _reference(flags["worker_codespec"], flags["worker_version"])
    elif flags["worker_version"]:
        raise click.BadParameter(
            "--worker-version needs --worker-codespec", param_hint="--worker-version"
        )
    if flags["worker_replicas"] is not None:
        run.worker.replicas = flags["worker_replicas"]
    if flags["worker_node_pool"]:
        run.worker.node_pool = flags["worker_node_pool"]
    if flags["worker_restart"]:
        run.worker.restart_policy = RESTART_POLICIES[flags["worker_restart"].lower()]
    if flags["timeout"]:
        run.timeout_seconds = timeout_seconds(flags["timeout"])
    run.tags.update(key_values(comma_pairs(flags["tag"]), "--tag"))
    if flags["cluster"]:
        run.cluster = flags["cluster"]
    if flags["buffer_access_ttl"]:
        try:
            run.buffer_access_ttl = time_span(flags["buffer_access_ttl"], "--buffer-access-ttl")
        except SpecError as exc:
            detail = str(exc).split(": ", 1)[1]
            raise click.BadParameter(detail, param_hint="--buffer-access-ttl") from None
    if flags["pull"]:
        run.pull_policy = PULL_POLICIES[flags["pull"].lower()]
    run.buffers.update(key_values(comma_pairs(flags["buffer"]), "--buffer"))
    run.job.tags.update(key_values(comma_pairs(flags["buffer_tag"]), "--buffer-tag"))
    if flags["buffer_ttl"]:
        run.job.buffer_ttl = buffer_ttl(flags["buffer_ttl"])
    if not run.job.codespec.WhichOneof("reference"):
        raise click.UsageError("the job needs a codespec: use -c NAME or -f FILE")
    if run.HasField("worker") and not run.worker.codespec.WhichOneof("reference"):
        raise click.UsageError("the worker needs a codespec: use --worker-codespec NAME")
    return run


def run_options(fn: Any) -> Any:
    """Tyger's run flags, shared by create and exec."""
    options = [
        click.option("-f", "--file", "file", help="Run YAML file (flags override its values)."),
        click.option("-c", "--codespec", help="Job codespec name."),
        click.option("--version", type=POSITIVE, help="Job codespec version."),
        click.option("-r", "--replicas", type=POSITIVE, help="Job replicas (default 1)."),
        click.option("--node-pool", help="Node pool of the job."),
        click.option("--worker-codespec", help="Worker codespec name."),
        click.option("--worker-version", type=POSITIVE, help="Worker codespec version."),
        click.option("--worker-replicas", type=POSITIVE, help="Worker replicas (default 1)."),
        click.option("--worker-node-pool", help="Node pool of the workers."),
        click.option(
            "--worker-restart",
            type=click.Choice(["never", "always"], case_sensitive=False),
            help="When a worker's process exits: never restart it, the run fails (default, "
            "for MPI-style jobs), or always restart it in place (Tyger's behaviour).",
        ),
        click.option(
            "--timeout",
            help="Run timeout: a Go duration (300s, 1.5h, 2h45m) or seconds (default 12h).",
        ),
        click.option("--tag", multiple=True, metavar="K=V", help="Tag (repeatable, or a=1,b=2)."),
        click.option("--cluster", help="Tyger's target cluster: stored only (one cluster here)."),
        click.option(
            "--pull",
            type=click.Choice(list(PULL_POLICIES), case_sensitive=False),
            is_flag=False,
            flag_value="always",
            help="When nodes pull the images: missing (only what a node lacks), always "
            "(also --pull alone, as in Tyger), never (default: the control plane's).",
        ),
        click.option("--buffer-access-ttl", hidden=True, help="D.HH:MM:SS, stored."),
        click.option(
            "-b",
            "--buffer",
            multiple=True,
            metavar="NAME=ID",
            help="Bind the job's buffer parameter NAME to buffer ID (repeatable, or a=ID,b=ID); "
            "parameters left out get new buffers.",
        ),
        click.option(
            "--buffer-tag",
            multiple=True,
            metavar="K=V",
            help="Tag of the buffers made for the run (repeatable, or a=1,b=2; job.tags).",
        ),
        click.option(
            "--buffer-ttl",
            metavar="D.HH:MM:SS",
            help="Lifetime of the buffers made for the run (job.bufferTtl; default: none).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.group(cls=AliasGroup)
def run() -> None:
    """Create, follow and inspect runs."""


cli.alias("runs", "run")
run.alias("get", "show")  # type: ignore[attr-defined]  # an AliasGroup (muster_cli.app)
run.alias("stop", "cancel")  # type: ignore[attr-defined]  # an AliasGroup (muster_cli.app)
run.alias("count", "counts")  # type: ignore[attr-defined]  # an AliasGroup (muster_cli.app)


def _create(
    ctx: click.Context, leaf_server: str | None, file: str | None, flags: dict[str, Any]
) -> tuple[str, pb.Run]:
    message = build_run(file, flags)
    server = address(ctx, leaf_server)
    # One request id per invocation: retries after a lost reply (a control
    # plane restarting) return the run the first attempt created, never a second.
    request = pb.CreateRunRequest(run=message, request_id=uuid.uuid4().hex)
    with channel(server) as ch:
        stub = pb_grpc.RunServiceStub(ch)
        reply = with_retries(lambda: stub.CreateRun(request, timeout=30))
    return server, reply.run


@run.command("create", context_settings=CONTEXT)
@run_options
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_create(
    ctx: click.Context, file: str | None, fmt: str, leaf_server: str | None, **flags: Any
) -> None:
    """Create a run; prints its id."""
    _, created = _create(ctx, leaf_server, file, flags)
    click.echo(created.id if fmt == "table" else dump(run_dict(created), fmt))
    if fmt == "table" and sys.stderr.isatty():
        click.echo(progress_line(created), err=True)


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


def follow(server: str, run_id: int, emit: Callable[[str], None]) -> pb.Run:
    """Watch until the run ends, calling `emit` with each new progress line
    (reconnecting if the control plane restarts)."""
    last_line, last = "", None
    retry = Reconnect(server, f"watching run {run_id}")
    while True:
        try:
            with open_channel(server) as ch:
                stub = pb_grpc.RunServiceStub(ch)
                for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)):
                    retry.progress()
                    last = reply.run
                    line = progress_line(last)
                    if line != last_line:
                        emit(line)
                        last_line = line
            if last is not None and last.status in TERMINAL:
                return last
        except grpc.RpcError as err:
            retry.failed(err)


def stamped_to_stderr(line: str) -> None:
    """Progress for a person: time-stamped lines on stderr."""
    click.echo(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {line}", err=True)


def finish(run: pb.Run, fmt: str) -> None:
    """Print the outcome and exit 0 only if the run succeeded."""
    if fmt != "table":
        click.echo(dump(run_dict(run), fmt))
    if run.status == pb.RUN_STATUS_SUCCEEDED:
        if fmt == "table":
            click.echo(f"run {run.id} succeeded", err=True)
        sys.exit(0)
    reason = f": {run.status_reason}" if run.status_reason else ""
    fail(f"run {run.id} {status_text(run).lower()}{reason}")


@run.command("exec", context_settings=CONTEXT)
@run_options
@click.option(
    "--logs", "with_logs", is_flag=True, help="Print the run's logs to stderr while it runs."
)
@click.option("--timestamps", is_flag=True, help="With --logs, prefix each line with its time.")
@click.option("--cancel-on-exit", is_flag=True, help="On Ctrl-C, cancel the run without asking.")
@click.option(
    "--block-size", metavar="SIZE", help="Blocks of stdin written to the input buffer (4Mi)."
)
@click.option("--write-dop", type=POSITIVE, default=16, show_default=True, help="Uploads at once.")
@click.option("--read-dop", type=POSITIVE, default=32, show_default=True, help="Downloads at once.")
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_exec(
    ctx: click.Context,
    file: str | None,
    fmt: str,
    leaf_server: str | None,
    with_logs: bool,
    timestamps: bool,
    cancel_on_exit: bool,
    block_size: str | None,
    write_dop: int,
    read_dop: int,
    **flags: Any,
) -> None:
    """Create a run and wait for it to end; exit code 0 only if it succeeded.

    Progress, and logs with --logs, go to stderr, as in Tyger. When the job
    has buffers, its one unbound input is fed from stdin and its one unbound
    output is written to stdout (-b NAME=ID binds the others). With -o
    json|yaml the final run is printed. On Ctrl-C it asks whether to cancel the run (or cancels
    at once with --cancel-on-exit, or when stdin feeds the run).
    """
    from muster_cli import exec_pipes

    options = exec_pipes.Options(
        fmt, with_logs, timestamps, cancel_on_exit, block_size, write_dop, read_dop
    )
    if exec_pipes.exec_with_pipes(ctx, leaf_server, file, dict(flags), options):
        return
    server, created = _create(ctx, leaf_server, file, flags)
    show = fmt == "table" and sys.stderr.isatty()
    if show:
        click.echo(f"run {created.id} created", err=True)
    log_thread = None
    if with_logs:
        log_thread = threading.Thread(
            target=stream_logs,
            args=(server, created.id),
            kwargs={
                "follow": True,
                "since": None,
                "tail": 0,
                "timestamps": timestamps,
                "out": sys.stderr,
            },
            daemon=True,
        )
        log_thread.start()
    try:
        final = follow(server, created.id, stamped_to_stderr if show else lambda _: None)
        if log_thread is not None:
            log_thread.join(timeout=30)
    except KeyboardInterrupt:
        interrupted(server, created.id, cancel_on_exit)
    finish(final, fmt)


def interrupted(server: str, run_id: int, cancel_on_exit: bool) -> None:
    """Ctrl-C during exec: cancel (asking first unless told), then exit 130."""
    cancel = cancel_on_exit
    if not cancel and sys.stdin.isatty():
        cancel = click.confirm(f"\ncancel run {run_id}?", default=False, err=True)
    if cancel:
        with channel(server) as ch:
            pb_grpc.RunServiceStub(ch).CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=30)
        fail(f"run {run_id} canceled", 130)
    fail(f"stopped waiting; run {run_id} continues (muster run cancel {run_id} stops it)", 130)


@run.command("logs", context_settings=CONTEXT)
@click.argument("run_id", type=RUN_ID)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@click.option(
    "-s",
    "--since",
    help="Only lines at or after a time (RFC 3339, local without a zone) or a duration ago.",
)
@click.option("--tail", type=COUNT, default=0, help="Only the last N lines.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its time.")
@server_option
@click.pass_context
def run_logs(
    ctx: click.Context,
    run_id: int,
    follow: bool,
    since: str | None,
    tail: int,
    timestamps: bool,
    leaf_server: str | None,
) -> None:
    """Print the merged logs of a run's job and workers, in time order."""
    stream_logs(
        address(ctx, leaf_server),
        run_id,
        follow=follow,
        since=parse_since(since) if since else None,
        tail=tail,
        timestamps=timestamps,
    )


@run.command("watch", context_settings=CONTEXT)
@click.argument("run_id", type=RUN_ID)
@click.option(
    "--full-resource",
    is_flag=True,
    help="Print the whole run as a JSON line at each change (Tyger's output).",
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="json: one JSON line per change with the run's status fields, as Tyger prints.",
)
@server_option
@click.pass_context
def run_watch(
    ctx: click.Context, run_id: int, full_resource: bool, fmt: str, leaf_server: str | None
) -> None:
    """Print one line per change until the run ends; exit code reflects the outcome."""
    server = address(ctx, leaf_server)
    if full_resource or fmt == "json":
        final = follow_json(server, run_id, run_dict if full_resource else run_metadata)
    else:
        final = follow(server, run_id, click.echo)
    sys.exit(0 if final.status == pb.RUN_STATUS_SUCCEEDED else 1)


def follow_json(server: str, run_id: int, shape: Callable[[pb.Run], dict]) -> pb.Run:
    """Watch as Tyger prints it: a compact JSON line whenever the shape changes."""
    last_line, last = "", None
    retry = Reconnect(server, f"watching run {run_id}")
    while True:
        try:
            with open_channel(server) as ch:
                for reply in pb_grpc.RunServiceStub(ch).WatchRun(pb.WatchRunRequest(run_id=run_id)):
                    retry.progress()
                    last = reply.run
                    line = json.dumps(shape(last), separators=(",", ":"))
                    if line != last_line:
                        click.echo(line)
                        last_line = line
            if last is not None and last.status in TERMINAL:
                return last
        except grpc.RpcError as err:
            retry.failed(err)


@run.command("show", context_settings=CONTEXT)
@click.argument("run_id", type=RUN_ID)
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_show(ctx: click.Context, run_id: int, fmt: str, leaf_server: str | None) -> None:
    """Show a run with its replicas and events."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RunServiceStub(ch).GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
    click.echo(describe(reply.run) if fmt == "table" else dump(run_dict(reply.run), fmt))


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


@run.command("cancel", context_settings=CONTEXT)
@click.argument("run_id", type=RUN_ID)
@server_option
@click.pass_context
def run_cancel(ctx: click.Context, run_id: int, leaf_server: str | None) -> None:
    """Cancel a Pending or Running run."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RunServiceStub(ch).CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=30)
    click.echo(f"run {reply.run.id} {status_text(reply.run).lower()}")


def _status_values(names: tuple[str, ...]) -> list[int] | None:
    """--status values (repeated or a,b; any case) -> RunStatus numbers; None when
    only Canceling was asked for: muster cancels at once, so no run is ever Canceling."""
    wanted = [n.strip().capitalize() for n in comma_list(names)]
    for name in wanted:
        if name not in STATUSES and name != "Canceling":
            raise click.BadParameter(
                f"'{name}' is not a status; use {', '.join(STATUSES)} or Canceling",
                param_hint="--status",
            )
    known = [pb.RunStatus.Value(f"RUN_STATUS_{n.upper()}") for n in wanted if n != "Canceling"]
    return None if wanted and not known else known


@run.command("list", context_settings=CONTEXT)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Only these statuses (repeatable or a,b; any of " + ", ".join(STATUSES) + ").",
)
@click.option("--tag", multiple=True, metavar="K=V", help="Only runs with all these tags.")
@click.option(
    "-s", "--since", help="Only runs created at or after a time (local without a zone) or 10m ago."
)
@click.option("-l", "--limit", type=POSITIVE, default=1000, show_default=True)
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_list(
    ctx: click.Context,
    statuses: tuple[str, ...],
    tag: tuple[str, ...],
    since: str | None,
    limit: int,
    fmt: str,
    leaf_server: str | None,
) -> None:
    """List runs, newest first."""
    wanted = _status_values(statuses)
    runs: list[pb.Run] = []
    if wanted is not None:
        with channel(address(ctx, leaf_server)) as ch:
            stub = pb_grpc.RunServiceStub(ch)
            runs = collect_pages(
                lambda **r: stub.ListRuns(pb.ListRunsRequest(**r), timeout=30),
                "runs",
                limit,
                statuses=wanted,
                tags=key_values(comma_pairs(tag), "--tag"),
                since=parse_since(since) if since else None,
            )
    if fmt != "table":
        click.echo(dump([run_dict(r) for r in runs], fmt))
        return
    rows = [
        (
            r.id,
            status_text(r),
            r.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            r.job.codespec.named or "(inline)",
            (
                f"{r.worker.codespec.named or '(inline)'} x{r.worker.replicas}"
                if r.HasField("worker")
                else ""
            ),
            r.status_reason,
        )
        for r in runs
    ]
    click.echo(table(["ID", "STATUS", "CREATED", "JOB", "WORKERS", "REASON"], rows))


@run.command("counts", context_settings=CONTEXT)
@click.option("--tag", multiple=True, metavar="K=V", help="Only runs with all these tags.")
@click.option(
    "-s", "--since", help="Only runs created at or after a time (local without a zone) or 10m ago."
)
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_counts(
    ctx: click.Context, tag: tuple[str, ...], since: str | None, fmt: str, leaf_server: str | None
) -> None:
    """Count runs by status."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RunServiceStub(ch).CountRuns(
            pb.CountRunsRequest(
                tags=key_values(comma_pairs(tag), "--tag"),
                since=parse_since(since) if since else None,
            ),
            timeout=30,
        )
    counts = {enum_text(pb.RunStatus.Name(c.status)): c.count for c in reply.counts}
    if fmt != "table":
        click.echo(dump(counts, fmt))
        return
    click.echo(table(["STATUS", "COUNT"], [*counts.items(), ("Total", reply.total)]))


@run.command("set", context_settings=CONTEXT)
@click.argument("run_id", type=RUN_ID)
@click.option("--tag", multiple=True, metavar="K=V", help="Add or replace a tag (repeatable).")
@click.option("--clear-tags", is_flag=True, help="Remove every existing tag first.")
@click.option("--etag", default="", help="Only if the run's eTag is still this one.")
@format_option("-o", "--output")
@server_option
@click.pass_context
def run_set(
    ctx: click.Context,
    run_id: int,
    tag: tuple[str, ...],
    clear_tags: bool,
    etag: str,
    fmt: str,
    leaf_server: str | None,
) -> None:
    """Update or replace a run's tags; prints the run (JSON, as Tyger)."""
    request = pb.UpdateRunTagsRequest(
        run_id=run_id,
        tags=key_values(comma_pairs(tag), "--tag"),
        clear_tags=clear_tags,
        etag=etag,
    )
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RunServiceStub(ch).UpdateRunTags(request, timeout=30)
    click.echo(dump(run_dict(reply.run), "json" if fmt == "table" else fmt))
