"""`muster login`, `muster whoami` and `muster token create|list|revoke`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import cast

import click
import grpc

from muster.common.clientconfig import ClientConfig
from muster.v1 import auth_pb2 as pb
from muster.v1 import auth_pb2_grpc as pb_grpc
from muster_cli.app import CONTEXT, address, cli, format_option, server_option
from muster_cli.client import channel, fail, open_channel, user_config_path
from muster_cli.output import dump, table, to_dict, when
from muster_cli.timeparse import optional_duration

ROLES = ["admin", "user", "reader"]


def role_pb(text: str) -> pb.Role:
    """'user' -> ROLE_USER."""
    return cast(pb.Role, pb.Role.Value(f"ROLE_{text.upper()}"))


def role_text(value: int) -> str:
    """ROLE_USER -> 'user'."""
    return pb.Role.Name(value).removeprefix("ROLE_").lower()


def ttl_seconds(text: str | None) -> int:
    """Seconds of a --ttl value; 0 when not given."""
    return optional_duration(text, "--ttl", "30d, 12h, 90m")


@cli.command(context_settings=CONTEXT)
@click.option("--server", "login_server", required=True, metavar="HOST:PORT", help="API address.")
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The cluster CA certificate (PEM), from the control plane's state directory.",
)
@click.option("--token", required=True, envvar="MUSTER_TOKEN", help="Your bearer token.")
@click.option(
    "--config",
    "target",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File to write (default: $MUSTER_CONFIG or ~/.config/muster/config.json).",
)
def login(login_server: str, ca_cert: Path, token: str, target: Path | None) -> None:
    """Check a token against a control plane and save the credentials."""
    config = ClientConfig(login_server, ca_cert.read_text(), token.strip())
    ch = open_channel(login_server, config)
    try:
        me = pb_grpc.TokenServiceStub(ch).WhoAmI(pb.WhoAmIRequest(), timeout=15)
    except grpc.RpcError as err:
        code = err.code()
        fail(f"login to {login_server} failed: {code.name}: {err.details()}")
    finally:
        ch.close()
    path = target or Path(os.environ.get("MUSTER_CONFIG") or user_config_path())
    config.save(path)
    click.echo(
        f"logged in to {login_server} as '{me.name}' (role {role_text(me.role)}); "
        f"credentials saved in {path}"
    )


@cli.command(context_settings=CONTEXT)
@server_option
@click.pass_context
def whoami(ctx: click.Context, leaf_server: str | None) -> None:
    """Show the name and role of the token in use."""
    with channel(address(ctx, leaf_server)) as ch:
        me = pb_grpc.TokenServiceStub(ch).WhoAmI(pb.WhoAmIRequest(), timeout=15)
    expires = when(me.expires_at) if me.HasField("expires_at") else "never"
    click.echo(f"{me.name} (role {role_text(me.role)}, expires {expires})")


@cli.group()
def token() -> None:
    """Bearer tokens for people and programs (admin only)."""


@token.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option(
    "--ttl", default=None, metavar="DURATION", help="Lifetime, e.g. 30d or 12h (default: none)."
)
@server_option
@click.pass_context
def token_create(
    ctx: click.Context, name: str, role: str, ttl: str | None, leaf_server: str | None
) -> None:
    """Create a token; its secret is printed once, alone on stdout."""
    request = pb.CreateTokenRequest(name=name, role=role_pb(role), ttl_seconds=ttl_seconds(ttl))
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.TokenServiceStub(ch).CreateToken(request, timeout=15)
    click.echo(reply.secret)
    if sys.stderr.isatty():
        click.echo("store it now: it cannot be shown again", err=True)


@token.command("list", context_settings=CONTEXT)
@format_option("-o", "--output")
@server_option
@click.pass_context
def token_list(ctx: click.Context, fmt: str, leaf_server: str | None) -> None:
    """List tokens (never their secrets)."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.TokenServiceStub(ch).ListTokens(pb.ListTokensRequest(), timeout=15)
    if fmt != "table":
        click.echo(dump([to_dict(t) for t in reply.tokens], fmt))
        return
    rows = [
        (
            t.name,
            role_text(t.role),
            when(t.created_at),
            when(t.expires_at),
            when(t.revoked_at),
        )
        for t in reply.tokens
    ]
    click.echo(table(["NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"], rows))


@token.command("revoke", context_settings=CONTEXT)
@click.argument("name")
@server_option
@click.pass_context
def token_revoke(ctx: click.Context, name: str, leaf_server: str | None) -> None:
    """Revoke a token: every later call with it is refused."""
    with channel(address(ctx, leaf_server)) as ch:
        pb_grpc.TokenServiceStub(ch).RevokeToken(pb.RevokeTokenRequest(name=name), timeout=15)
    click.echo(f"token '{name}' revoked")
