"""The `muster` command group and the options every command shares."""

from __future__ import annotations

import csv
import importlib
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


def comma_pairs(values: tuple[str, ...]) -> tuple[str, ...]:
    """Tyger's (pflag's) K=V lists: a value with one `=` is one pair, commas
    included (`A=1,2`); with several, it is a CSV list (`A=1,B=2`, `A="1,2",B=3`)."""
    out: list[str] = []
    for value in values:
        if value.count("=") <= 1:
            out.append(value)
        else:
            out.extend(_csv_row(value))
    return tuple(out)


def comma_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Tyger's (pflag's) string lists: each value is a CSV row (`-i a,b` is two names)."""
    return tuple(item for value in values for item in (_csv_row(value) if value else [""]))


def _csv_row(value: str) -> list[str]:
    try:
        return next(csv.reader([value], strict=True), [])
    except csv.Error as exc:
        raise click.BadParameter(f"'{value}' is not a comma-separated list: {exc}") from None


class AliasGroup(click.Group):
    """A group that also answers to Tyger's aliases of its commands
    (`codespecs`, `runs`, `get`, `stop`, `count`); help lists them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.aliases: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def alias(self, alias: str, name: str) -> None:
        """Make `alias` another name of the command `name`."""
        self.aliases[alias] = name

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        if self.aliases:
            with formatter.section("Aliases"):
                formatter.write_dl(sorted(self.aliases.items()))


class LazyGroup(click.Group):
    """A group some of whose commands live in modules imported only when one
    of them is run (or help lists them): heavy dependencies (the buffer data
    path's HTTP client) cost nothing to every other command's start."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.lazy = dict(lazy or {})  # command name -> "module:attribute"
        super().__init__(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


class RootGroup(AliasGroup, LazyGroup):
    """The `muster` group: aliases first, then each command's module imported
    when that command runs (a command's start pays only for its own module,
    the protobuf modules it needs and gRPC)."""


COMMANDS = {
    "login": "muster_cli.auth:login",
    "whoami": "muster_cli.auth:whoami",
    "token": "muster_cli.auth:token",
    "buffer": "muster_cli.buffers:buffer",
    "codespec": "muster_cli.codespecs:codespec",
    "registry": "muster_cli.images:registry",
    "image": "muster_cli.images:image",
    "node": "muster_cli.nodes:node",
    "run": "muster_cli.run_queries:run",  # run_queries adds its commands to runs.run
}


@click.group(cls=RootGroup, lazy=COMMANDS, context_settings=CONTEXT)
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


for _alias, _name in (("runs", "run"), ("codespecs", "codespec"), ("buffers", "buffer")):
    cli.alias(_alias, _name)  # Tyger's names
