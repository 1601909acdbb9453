"""The `muster` command group and the options every command shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from muster_cli.client import server_address, set_config_flag
from muster_cli.output import FORMATS

INT32 = 2**31 - 1
INT64 = 2**63 - 1
# Bounded integer types, so an out-of-range number is a usage error, not a traceback.
COUNT = click.IntRange(0, INT32)
POSITIVE = click.IntRange(1, INT32)
RUN_ID = click.IntRange(1, INT64)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def server_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server on every leaf command (it overrides the group's and MUSTER_SERVER)."""
    return click.option(
        "--server",
        "leaf_server",
        default=None,
        metavar="HOST:PORT",
        help="Control plane address (default: $MUSTER_SERVER or 127.0.0.1:50051).",
    )(fn)


def format_option(*flags: str) -> Callable[..., Any]:
    """-o/--output json|yaml|table (or only --format where -o means something else)."""
    return click.option(
        *flags,
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )


def address(ctx: click.Context, leaf: str | None) -> str:
    """The control plane address for this invocation."""
    return server_address(leaf or (ctx.obj or {}).get("server"))


def key_values(pairs: tuple[str, ...], flag: str, cast: Callable[[str], Any] = str) -> dict:
    """Parse repeated K=V flags."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint=flag)
        try:
            out[key] = cast(value)
        except ValueError as exc:
            detail = str(exc) if "range" in str(exc) else "not a number"
            raise click.BadParameter(f"'{value}' in '{pair}': {detail}", param_hint=flag) from None
    return out


@click.group(context_settings=CONTEXT)
@click.option(
    "--server",
    default=None,
    metavar="HOST:PORT",
    help="Control plane address (default: $MUSTER_SERVER or 127.0.0.1:50051).",
)
@click.option(
    "--config",
    default=None,
    metavar="FILE",
    help="Client credential file (default: $MUSTER_CONFIG, ~/.config/muster/config.json, "
    "or this machine's control plane admin.json).",
)
@click.pass_context
def cli(ctx: click.Context, server: str | None, config: str | None) -> None:
    """muster: distributed container jobs on your own Podman hosts."""
    ctx.obj = {"server": server}
    set_config_flag(config)
