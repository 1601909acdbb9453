"""`muster run show|cancel|list|counts|set`."""

from __future__ import annotations

import click

from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc
from muster_cli.app import (
    CONTEXT,
    POSITIVE,
    RUN_ID,
    address,
    comma_list,
    comma_pairs,
    format_option,
    key_values,
    server_option,
)
from muster_cli.client import channel, collect_pages
from muster_cli.output import dump, enum_text, run_dict, table
from muster_cli.run_text import describe, status_text
from muster_cli.runs import run
from muster_cli.timeparse import parse_since

STATUSES = ["Pending", "Running", "Succeeded", "Failed", "Canceled"]


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
