"""`muster run create|exec|logs|watch`; the group's other commands are in run_queries."""

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

from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc
from muster_cli.app import (
    CONTEXT,
    COUNT,
    POSITIVE,
    RUN_ID,
    AliasGroup,
    address,
    cli,
    format_option,
    server_option,
)
from muster_cli.client import Reconnect, channel, fail, open_channel, with_retries
from muster_cli.logs import stream_logs
from muster_cli.output import dump, run_dict, run_metadata
from muster_cli.run_spec import build_run, run_options
from muster_cli.run_text import TERMINAL, progress_line, status_text
from muster_cli.timeparse import parse_since
from muster_cli.watching import watch_run


@cli.group(cls=AliasGroup)
def run() -> None:
    """Create, follow and inspect runs."""


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


def follow(server: str, run_id: int, emit: Callable[[str], None]) -> pb.Run:
    """Watch until the run ends, calling `emit` with each new progress line
    (reconnecting if the control plane restarts)."""
    last_line, last = "", None
    retry = Reconnect(server, f"watching run {run_id}")
    while True:
        try:
            with open_channel(server) as ch:
                for last in watch_run(pb_grpc.RunServiceStub(ch), run_id):
                    retry.progress()
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
                for last in watch_run(pb_grpc.RunServiceStub(ch), run_id):
                    retry.progress()
                    line = json.dumps(shape(last), separators=(",", ":"))
                    if line != last_line:
                        click.echo(line)
                        last_line = line
            if last is not None and last.status in TERMINAL:
                return last
        except grpc.RpcError as err:
            retry.failed(err)
