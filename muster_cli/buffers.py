"""`muster buffer` (alias `buffers`): Tyger's buffer management commands.

create, show, list, set, delete, restore, purge, access and count work on
buffer records over BufferService; `read` and `write` (the bytes) are added
by `muster_cli.buffer_io`. Output is JSON in Tyger's shape, so scripts
written for `tyger buffer` read it unchanged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import grpc

from muster.common.timespan import TimeSpanError, is_timespan, timespan_seconds
from muster.v1 import buffer_pb2 as pb
from muster.v1 import buffer_pb2_grpc as pb_grpc
from muster_cli.app import (
    CONTEXT,
    POSITIVE,
    LazyGroup,
    address,
    cli,
    comma_pairs,
    key_values,
    server_option,
)
from muster_cli.client import channel, collect_pages, fail
from muster_cli.timeparse import parse_duration

TTL_HELP = "D.HH:MM:SS as in Tyger (1 is a day, 0.01:30 is 90 minutes) or a duration (90m, 2h)"
DEFAULT_LIST_LIMIT = 1000


def parse_ttl(text: str, flag: str = "--ttl") -> int:
    """Seconds of a TTL: Tyger's TimeSpan (`D.HH:MM:SS`, read by the same
    code as the control plane's, muster.common.timespan) or a duration with
    units (`90m`, `1h30m`)."""
    if is_timespan(text):
        try:
            return timespan_seconds(text)
        except TimeSpanError as exc:
            raise click.BadParameter(f"{exc}; {TTL_HELP}", param_hint=flag) from None
    try:
        if not any(c.isalpha() for c in text):
            raise click.BadParameter(text)  # digits without units: only Tyger's form
        seconds = parse_duration(text)
    except click.BadParameter:
        raise click.BadParameter(
            f"'{text}' is not a TTL; use {TTL_HELP}", param_hint=flag
        ) from None
    if seconds < 0:
        raise click.BadParameter(f"'{text}' is negative", param_hint=flag)
    return seconds


def buffer_dict(b: pb.Buffer) -> dict[str, Any]:
    """A buffer as Tyger prints it (empty fields left out; isSoftDeleted only when true)."""
    doc: dict[str, Any] = {"id": b.id, "createdAt": b.created_at.ToJsonString()}
    if b.location:
        doc["location"] = b.location
    if b.tags:
        doc["tags"] = dict(sorted(b.tags.items()))
    doc["eTag"] = b.etag
    if b.HasField("expires_at"):
        doc["expiresAt"] = b.expires_at.ToJsonString()
    if b.soft_deleted:
        doc["isSoftDeleted"] = True
    return doc


def echo_json(value: Any) -> None:
    """JSON on stdout, indented as Tyger prints it."""
    click.echo(json.dumps(value, indent=2))


def echo_buffers(buffers: list[pb.Buffer]) -> None:
    """One buffer as an object, several as an array (Tyger's delete/restore output)."""
    docs = [buffer_dict(b) for b in buffers]
    echo_json(docs[0] if len(docs) == 1 else docs)


def tag_options(verb: str, *, exclude: bool = True) -> Any:
    """--tag (and --exclude-tag) K=V, repeatable."""

    def decorate(fn: Any) -> Any:
        if exclude:
            fn = click.option(
                "--exclude-tag",
                "exclude_tags",
                multiple=True,
                metavar="K=V",
                help="Leave out buffers with this tag (repeatable).",
            )(fn)
        return click.option(
            "--tag", "tags", multiple=True, metavar="K=V", help=f"{verb} (repeatable)."
        )(fn)

    return decorate


def stub(ch: grpc.Channel) -> pb_grpc.BufferServiceStub:
    """The BufferService client."""
    return pb_grpc.BufferServiceStub(ch)


# `read` and `write` move the bytes (muster_cli/buffer_io.py); imported only when used.
IO_COMMANDS = {
    "read": "muster_cli.buffer_io:buffer_read",
    "write": "muster_cli.buffer_io:buffer_write",
}


@cli.group("buffer", cls=LazyGroup, lazy=IO_COMMANDS, context_settings=CONTEXT)
def buffer() -> None:
    """Buffers: named, tagged streams of bytes that runs read and write."""


@buffer.command("create", context_settings=CONTEXT)
@tag_options("Tag the buffer with K=V", exclude=False)
@click.option("--ttl", default=None, metavar="TTL", help=f"Lifetime: {TTL_HELP}; default: none.")
@click.option("--full-resource", is_flag=True, help="Print the whole buffer as JSON, not its id.")
@server_option
@click.pass_context
def buffer_create(
    ctx: click.Context,
    tags: tuple[str, ...],
    ttl: str | None,
    full_resource: bool,
    leaf_server: str | None,
) -> None:
    """Create a buffer and print its id."""
    request = pb.CreateBufferRequest(
        tags=key_values(comma_pairs(tags), "--tag"), ttl_seconds=parse_ttl(ttl) if ttl else 0
    )
    with channel(address(ctx, leaf_server)) as ch:
        made = stub(ch).CreateBuffer(request, timeout=30).buffer
    if full_resource:
        echo_json(buffer_dict(made))
    else:
        click.echo(made.id)


@buffer.command("show", context_settings=CONTEXT)
@click.argument("buffer_id", metavar="ID")
@click.option("--soft-deleted", is_flag=True, help="Look among soft-deleted buffers.")
@server_option
@click.pass_context
def buffer_show(
    ctx: click.Context, buffer_id: str, soft_deleted: bool, leaf_server: str | None
) -> None:
    """Show a buffer as JSON."""
    request = pb.GetBufferRequest(id=buffer_id, soft_deleted=soft_deleted)
    with channel(address(ctx, leaf_server)) as ch:
        echo_json(buffer_dict(stub(ch).GetBuffer(request, timeout=30).buffer))


def _filter(
    tags: tuple[str, ...], exclude_tags: tuple[str, ...], soft_deleted: bool
) -> pb.BufferFilter:
    return pb.BufferFilter(
        tags=key_values(comma_pairs(tags), "--tag"),
        exclude_tags=key_values(comma_pairs(exclude_tags), "--exclude-tag"),
        soft_deleted=soft_deleted,
    )


@buffer.command("list", context_settings=CONTEXT)
@tag_options("Only buffers with this tag")
@click.option("--soft-deleted", is_flag=True, help="List soft-deleted buffers instead.")
@click.option(
    "-l", "--limit", type=POSITIVE, default=None, help="At most this many (default 1000)."
)
@server_option
@click.pass_context
def buffer_list(
    ctx: click.Context,
    tags: tuple[str, ...],
    exclude_tags: tuple[str, ...],
    soft_deleted: bool,
    limit: int | None,
    leaf_server: str | None,
) -> None:
    """List buffers as JSON, newest first."""
    wanted = limit or DEFAULT_LIST_LIMIT
    flt = _filter(tags, exclude_tags, soft_deleted)
    with channel(address(ctx, leaf_server)) as ch:
        service = stub(ch)
        found = collect_pages(
            lambda **r: service.ListBuffers(pb.ListBuffersRequest(**r), timeout=30),
            "buffers",
            wanted + 1,
            filter=flt,
        )
    echo_json([buffer_dict(b) for b in found[:wanted]])
    if len(found) > wanted and limit is None:
        click.echo("warning: the output was truncated; use --limit to list more buffers", err=True)


@buffer.command("count", context_settings=CONTEXT)
@tag_options("Only buffers with this tag")
@click.option("--soft-deleted", is_flag=True, help="Count soft-deleted buffers instead.")
@server_option
@click.pass_context
def buffer_count(
    ctx: click.Context,
    tags: tuple[str, ...],
    exclude_tags: tuple[str, ...],
    soft_deleted: bool,
    leaf_server: str | None,
) -> None:
    """Print how many buffers match."""
    request = pb.CountBuffersRequest(filter=_filter(tags, exclude_tags, soft_deleted))
    with channel(address(ctx, leaf_server)) as ch:
        click.echo(stub(ch).CountBuffers(request, timeout=30).count)


@buffer.command("set", context_settings=CONTEXT)
@click.argument("buffer_id", metavar="ID")
@tag_options("Add or replace this tag", exclude=False)
@click.option("--clear-tags", is_flag=True, help="Remove every existing tag first.")
@click.option("--etag", default="", help="Only if the buffer's ETag is still this one.")
@click.option("--ttl", default=None, metavar="TTL", help=f"New lifetime from now: {TTL_HELP}.")
@server_option
@click.pass_context
def buffer_set(
    ctx: click.Context,
    buffer_id: str,
    tags: tuple[str, ...],
    clear_tags: bool,
    etag: str,
    ttl: str | None,
    leaf_server: str | None,
) -> None:
    """Change a buffer's tags or lifetime; print it as JSON."""
    request = pb.UpdateBufferRequest(
        id=buffer_id, tags=key_values(comma_pairs(tags), "--tag"), clear_tags=clear_tags, etag=etag
    )
    if ttl is not None:
        request.ttl_seconds = parse_ttl(ttl)
    with channel(address(ctx, leaf_server)) as ch:
        echo_json(buffer_dict(stub(ch).UpdateBuffer(request, timeout=30).buffer))


def _selection(
    ids: tuple[str, ...], tags: tuple[str, ...], every: bool, command: str
) -> dict[str, Any]:
    """Exactly one of: ids, --tag, --all (as Tyger insists)."""
    if sum([bool(ids), bool(tags), every]) != 1:
        raise click.UsageError(f"give one of: buffer ids, --tag or --all to {command}")
    return {"ids": list(ids), "all": every}


def _confirmed(ch: grpc.Channel, verb: str, flt: pb.BufferFilter, force: bool) -> bool:
    """Tyger's bulk confirmation: count first, then ask (unless --force)."""
    if force:
        return True
    count = stub(ch).CountBuffers(pb.CountBuffersRequest(filter=flt), timeout=30).count
    if count == 0:
        click.echo("No buffers found.")
        return False
    if not sys.stdin.isatty():
        fail(f"this would {verb} {count} buffers; add --force to do it without a terminal")
    return click.confirm(f"Are you sure you want to {verb} {count} buffers?", default=False)


def _bulk(
    ctx: click.Context,
    leaf_server: str | None,
    selection: dict[str, Any],
    flt: pb.BufferFilter,
    force: bool,
    verb: str,
    call: Any,
) -> None:
    """By ids: print the buffers; by tags or all: confirm, then print how many."""
    with channel(address(ctx, leaf_server)) as ch:
        if selection["ids"]:
            echo_buffers(list(call(stub(ch))))
            return
        if not _confirmed(ch, verb, flt, force):
            return
        done = call(stub(ch))
    click.echo(f"{verb.capitalize()}d {len(done)} buffers.")


def _ttl_seconds(ttl: str | None) -> dict[str, Any]:
    return {"ttl_seconds": parse_ttl(ttl)} if ttl is not None else {}


@buffer.command("delete", context_settings=CONTEXT)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@tag_options("Delete every buffer with this tag")
@click.option("--all", "every", is_flag=True, help="Delete every buffer.")
@click.option(
    "--ttl", default=None, metavar="TTL", help=f"Restorable for this long: {TTL_HELP}; default 1d."
)
@click.option("--force", is_flag=True, help="Do not ask before deleting by --tag or --all.")
@server_option
@click.pass_context
def buffer_delete(
    ctx: click.Context,
    ids: tuple[str, ...],
    tags: tuple[str, ...],
    exclude_tags: tuple[str, ...],
    every: bool,
    ttl: str | None,
    force: bool,
    leaf_server: str | None,
) -> None:
    """Soft-delete buffers: hidden, restorable until the TTL passes, then purged."""
    selection = _selection(ids, tags, every, "delete")
    flt = _filter(tags, exclude_tags, False)
    request = pb.DeleteBuffersRequest(filter=flt, **selection, **_ttl_seconds(ttl))
    _bulk(
        ctx,
        leaf_server,
        selection,
        flt,
        force,
        "delete",
        lambda s: s.DeleteBuffers(request, timeout=60).buffers,
    )


@buffer.command("restore", context_settings=CONTEXT)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@tag_options("Restore every soft-deleted buffer with this tag", exclude=False)
@click.option("--all", "every", is_flag=True, help="Restore every soft-deleted buffer.")
@click.option("--force", is_flag=True, help="Do not ask before restoring by --tag or --all.")
@server_option
@click.pass_context
def buffer_restore(
    ctx: click.Context,
    ids: tuple[str, ...],
    tags: tuple[str, ...],
    every: bool,
    force: bool,
    leaf_server: str | None,
) -> None:
    """Restore soft-deleted buffers."""
    selection = _selection(ids, tags, every, "restore")
    request = pb.RestoreBuffersRequest(tags=key_values(comma_pairs(tags), "--tag"), **selection)
    flt = _filter(tags, (), True)
    _bulk(
        ctx,
        leaf_server,
        selection,
        flt,
        force,
        "restore",
        lambda s: s.RestoreBuffers(request, timeout=60).buffers,
    )


@buffer.command("purge", context_settings=CONTEXT)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@tag_options("Purge every soft-deleted buffer with this tag")
@click.option("--all", "every", is_flag=True, help="Purge every soft-deleted buffer.")
@click.option("--force", is_flag=True, help="Do not ask before purging by --tag or --all.")
@server_option
@click.pass_context
def buffer_purge(
    ctx: click.Context,
    ids: tuple[str, ...],
    tags: tuple[str, ...],
    exclude_tags: tuple[str, ...],
    every: bool,
    force: bool,
    leaf_server: str | None,
) -> None:
    """Delete soft-deleted buffers and their contents now (irreversible)."""
    selection = _selection(ids, tags, every, "purge")
    flt = _filter(tags, exclude_tags, True)
    request = pb.DeleteBuffersRequest(filter=flt, purge=True, **selection)
    _bulk(
        ctx,
        leaf_server,
        selection,
        flt,
        force,
        "purge",
        lambda s: s.DeleteBuffers(request, timeout=300).buffers,
    )


@buffer.command("access", context_settings=CONTEXT)
@click.argument("buffer_id", metavar="ID")
@click.option("-w", "--write", "writable", is_flag=True, help="A URL that may write the buffer.")
@click.option("--ttl", default=None, metavar="TTL", help="URL lifetime, 30s-1h (default 1h).")
@click.option("--access-ttl", "access_ttl", default=None, hidden=True)  # Tyger's name
@server_option
@click.pass_context
def buffer_access(
    ctx: click.Context,
    buffer_id: str,
    writable: bool,
    ttl: str | None,
    access_ttl: str | None,
    leaf_server: str | None,
) -> None:
    """Print a time-limited URL to read (or with -w, write) a buffer's contents."""
    text = ttl or access_ttl
    request = pb.GetBufferAccessRequest(
        id=buffer_id, writable=writable, ttl_seconds=parse_ttl(text) if text else 0
    )
    with channel(address(ctx, leaf_server)) as ch:
        try:
            reply = stub(ch).GetBufferAccess(request, timeout=30)
        except grpc.RpcError as err:
            details = err.details() or ""
            if err.code() == grpc.StatusCode.UNAVAILABLE and "data plane" in details:
                fail(details)  # the control plane answered: no "is it running?" hint
            raise
    click.echo(reply.uri)
