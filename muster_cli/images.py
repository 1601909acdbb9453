"""`muster registry login|logout|list` and `muster image pull|list`."""

from __future__ import annotations

import sys

import click

from muster.v1 import image_pb2 as pb
from muster.v1 import image_pb2_grpc as pb_grpc
from muster.v1 import run_pb2 as run_pb
from muster_cli.app import CONTEXT, address, cli, format_option, server_option
from muster_cli.client import channel, fail
from muster_cli.output import dump, human_bytes, table, to_dict
from muster_cli.timeparse import parse_duration


@cli.group()
def registry() -> None:
    """Registry credentials the control plane hands to nodes that pull (admin only)."""


def read_password(from_stdin: bool) -> str:
    """The password: all of stdin with --password-stdin (one trailing newline
    dropped), else a hidden prompt in a terminal."""
    if from_stdin:
        text = sys.stdin.read()
        password = text[:-1] if text.endswith("\n") else text
        password = password[:-1] if password.endswith("\r") else password
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, err=True)
    else:
        raise click.UsageError("give the password on stdin with --password-stdin")
    if not password:
        raise click.UsageError("the password is empty")
    return password


@registry.command("login", context_settings=CONTEXT)
@click.argument("registry_name", metavar="REGISTRY")
@click.option("-u", "--username", required=True, help="User name at the registry.")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password (or token) from stdin; without it, a terminal prompts.",
)
@server_option
@click.pass_context
def registry_login(
    ctx: click.Context,
    registry_name: str,
    username: str,
    password_stdin: bool,
    leaf_server: str | None,
) -> None:
    """Store credentials for REGISTRY (host[:port]); nodes get them when they pull from it."""
    password = read_password(password_stdin)
    request = pb.LoginRequest(registry=registry_name, username=username, password=password)
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RegistryServiceStub(ch).Login(request, timeout=15)
    click.echo(f"credentials for {reply.registry} stored (user {username})")


@registry.command("logout", context_settings=CONTEXT)
@click.argument("registry_name", metavar="REGISTRY")
@server_option
@click.pass_context
def registry_logout(ctx: click.Context, registry_name: str, leaf_server: str | None) -> None:
    """Forget the credentials for REGISTRY."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RegistryServiceStub(ch).Logout(
            pb.LogoutRequest(registry=registry_name), timeout=15
        )
    click.echo(f"credentials for {reply.registry} removed")


@registry.command("list", context_settings=CONTEXT)
@format_option("-o", "--output")
@server_option
@click.pass_context
def registry_list(ctx: click.Context, fmt: str, leaf_server: str | None) -> None:
    """List the registries with stored credentials (never the passwords)."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.RegistryServiceStub(ch).ListRegistries(
            pb.ListRegistriesRequest(), timeout=15
        )
    if fmt != "table":
        click.echo(dump([to_dict(r) for r in reply.registries], fmt))
        return
    click.echo(
        table(["REGISTRY", "USERNAME"], [(r.registry, r.username) for r in reply.registries])
    )


@cli.group()
def image() -> None:
    """Images on the nodes: warm them, see what they have."""


def _timeout(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except click.BadParameter:
        raise click.BadParameter(
            f"'{text}' is not a duration; use e.g. 90s, 10m", param_hint="--timeout"
        ) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")
    return seconds


@image.command("pull", context_settings=CONTEXT)
@click.argument("image_ref", metavar="IMAGE")
@click.option("--pool", default="", help="Only the nodes of this pool (default: every node).")
@click.option(
    "--always", is_flag=True, help="Fetch the reference again even where the node has it."
)
@click.option(
    "--timeout",
    "timeout_text",
    default="30m",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for the nodes.",
)
@format_option("-o", "--output")
@server_option
@click.pass_context
def image_pull(
    ctx: click.Context,
    image_ref: str,
    pool: str,
    always: bool,
    timeout_text: str,
    fmt: str,
    leaf_server: str | None,
) -> None:
    """Pull IMAGE onto every Ready node (of a pool); one line per node.

    Exit code 1 if any node failed (or did not answer in time).
    """
    seconds = _timeout(timeout_text)
    request = pb.PullImageRequest(
        image=image_ref,
        pool=pool,
        policy=run_pb.PULL_POLICY_ALWAYS if always else run_pb.PULL_POLICY_MISSING,
    )
    with channel(address(ctx, leaf_server)) as ch:
        # The control plane answers half a second before the deadline, with
        # a result for every node, so nodes get about `seconds`.
        reply = pb_grpc.ImageServiceStub(ch).PullImage(request, timeout=seconds + 1)
    if fmt != "table":
        click.echo(dump([to_dict(r) for r in reply.results], fmt))
    else:
        for r in reply.results:
            if r.error:
                click.echo(f"{r.node}: failed: {r.error}")
            else:
                what = "pulled" if r.pulled else "already present"
                click.echo(f"{r.node}: {what} {r.digest}".rstrip())
    failed = [r.node for r in reply.results if r.error]
    if failed:
        fail(f"the pull of {image_ref} failed on {len(failed)} of {len(reply.results)} nodes")


@image.command("list", context_settings=CONTEXT)
@click.option("--node", default="", help="Only this node (default: every Ready node).")
@format_option("-o", "--output")
@server_option
@click.pass_context
def image_list(ctx: click.Context, node: str, fmt: str, leaf_server: str | None) -> None:
    """List the images on the nodes. Exit code 1 if a node could not answer."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.ImageServiceStub(ch).ListImages(pb.ListImagesRequest(node=node), timeout=30)
    if fmt != "table":
        click.echo(dump([to_dict(n) for n in reply.nodes], fmt))
    else:
        rows = [
            (n.node, ",".join(i.tags) or "<none>", i.digest or "-", human_bytes(i.size_bytes))
            for n in reply.nodes
            for i in n.images
        ]
        click.echo(table(["NODE", "IMAGE", "DIGEST", "SIZE"], rows))
    errors = [n for n in reply.nodes if n.error]
    for n in errors:
        click.echo(f"warning: {n.node}: {n.error}", err=True)
    if errors:
        fail(f"{len(errors)} of {len(reply.nodes)} nodes could not list their images")
