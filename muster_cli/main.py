"""`muster` command line: Tyger's verbs and flags over the muster.v1 gRPC API."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster_cli.client import channel, fail, server_address
from muster_cli.output import FORMATS, dump, table, to_dict
from muster_cli.specfile import SpecError, load_codespec

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
        except ValueError:
            raise click.BadParameter(
                f"'{value}' in '{pair}' is not a number", param_hint=flag
            ) from None
    return out


@click.group(context_settings=CONTEXT)
@click.option(
    "--server",
    default=None,
    metavar="HOST:PORT",
    help="Control plane address (default: $MUSTER_SERVER or 127.0.0.1:50051).",
)
@click.pass_context
def cli(ctx: click.Context, server: str | None) -> None:
    """muster: distributed container jobs on your own Podman hosts."""
    ctx.obj = {"server": server}


@cli.group()
def codespec() -> None:
    """Create and inspect versioned codespecs."""


@codespec.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.argument("extra", nargs=-1, metavar="[-- ARGS...]")
@click.option("-f", "--file", "file", help="Codespec YAML file (flags override its values).")
@click.option("--image", help="Container image (must exist on the nodes).")
@click.option("-k", "--kind", type=click.Choice(["job", "worker"]), help="Kind (default job).")
@click.option("--max-replicas", type=click.IntRange(min=1), help="Upper bound on replicas.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("--endpoint", multiple=True, metavar="NAME=PORT", help="Worker endpoint.")
@click.option("-i", "--input", "inputs", multiple=True, help="Input buffer name.")
@click.option("-o", "--output", "outputs", multiple=True, help="Output buffer name.")
@click.option("--cpu-request", help="CPU request, e.g. 500m or 2.")
@click.option("--memory-request", help="Memory request, e.g. 512Mi.")
@click.option("--cpu-limit", help="CPU limit.")
@click.option("--memory-limit", help="Memory limit.")
@click.option("--gpu", type=click.IntRange(min=0), help="GPUs per replica.")
@click.option("--working-dir", help="Working directory in the container.")
@click.option(
    "--command",
    "is_command",
    is_flag=True,
    help="Treat the ARGS after -- as the command (entrypoint) instead of args.",
)
@format_option("--format")
@server_option
@click.pass_context
def codespec_create(
    ctx: click.Context,
    name: str,
    extra: tuple[str, ...],
    file: str | None,
    leaf_server: str | None,
    fmt: str,
    **flags: Any,
) -> None:
    """Create a codespec version; prints the version number.

    An identical codespec returns the latest version unchanged.
    """
    spec = load_codespec(file) if file else cpb.Codespec()
    if spec.name and spec.name != name:
        fail(f"the name in {file} ('{spec.name}') differs from NAME ('{name}')")
    spec.name = name
    apply_codespec_flags(spec, flags, extra)
    with channel(address(ctx, leaf_server)) as ch:
        reply = cgrpc.CodespecServiceStub(ch).CreateCodespec(
            cpb.CreateCodespecRequest(codespec=spec), timeout=30
        )
    if fmt == "table":
        click.echo(reply.codespec.version)
    else:
        click.echo(dump(to_dict(reply.codespec), fmt))


def apply_codespec_flags(spec: cpb.Codespec, flags: dict[str, Any], extra: tuple[str, ...]) -> None:
    """Flags override values read from a file."""
    if flags["image"]:
        spec.image = flags["image"]
    if flags["kind"]:
        spec.kind = cpb.CODESPEC_KIND_WORKER if flags["kind"] == "worker" else cpb.CODESPEC_KIND_JOB
    if flags["max_replicas"] is not None:
        spec.max_replicas = flags["max_replicas"]
    spec.env.update(key_values(flags["env"], "--env"))
    spec.endpoints.update(key_values(flags["endpoint"], "--endpoint", int))
    if flags["inputs"]:
        spec.buffers.ClearField("inputs")
        spec.buffers.inputs.extend(flags["inputs"])
    if flags["outputs"]:
        spec.buffers.ClearField("outputs")
        spec.buffers.outputs.extend(flags["outputs"])
    for flag, group, key in (
        ("cpu_request", "requests", "cpu"),
        ("memory_request", "requests", "memory"),
        ("cpu_limit", "limits", "cpu"),
        ("memory_limit", "limits", "memory"),
    ):
        if flags[flag]:
            setattr(getattr(spec.resources, group), key, flags[flag])
    if flags["gpu"] is not None:
        spec.resources.gpu = flags["gpu"]
    if flags["working_dir"]:
        spec.working_dir = flags["working_dir"]
    if extra:
        target = spec.command if flags["is_command"] else spec.args
        del target[:]
        target.extend(extra)
    elif flags["is_command"]:
        raise click.BadParameter("give the command after --", param_hint="--command")


@codespec.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), help="Exact version (default latest).")
@format_option("-o", "--output")
@server_option
@click.pass_context
def codespec_show(
    ctx: click.Context, name: str, version: int | None, fmt: str, leaf_server: str | None
) -> None:
    """Show a codespec (latest version unless --version)."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = cgrpc.CodespecServiceStub(ch).GetCodespec(
            cpb.GetCodespecRequest(name=name, version=version or 0), timeout=30
        )
    click.echo(dump(to_dict(reply.codespec), "yaml" if fmt == "table" else fmt))


@codespec.command("list", context_settings=CONTEXT)
@click.option("--prefix", default="", help="Only names starting with this.")
@click.option("--order", type=click.Choice(["newest", "name"]), default="newest", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@format_option("-o", "--output")
@server_option
@click.pass_context
def codespec_list(
    ctx: click.Context, prefix: str, order: str, limit: int, fmt: str, leaf_server: str | None
) -> None:
    """List codespecs (latest version of each)."""
    order_pb = cpb.CODESPEC_ORDER_NAME if order == "name" else cpb.CODESPEC_ORDER_NEWEST_FIRST
    items: list[cpb.Codespec] = []
    token = ""
    with channel(address(ctx, leaf_server)) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        while len(items) < limit:
            reply = stub.ListCodespecs(
                cpb.ListCodespecsRequest(
                    prefix=prefix,
                    order=order_pb,
                    page_size=min(limit - len(items), 1000),
                    page_token=token,
                ),
                timeout=30,
            )
            items.extend(reply.codespecs)
            token = reply.next_page_token
            if not token:
                break
    if fmt != "table":
        click.echo(dump([to_dict(s) for s in items], fmt))
        return
    rows = [
        (
            s.name,
            s.version,
            "worker" if s.kind == cpb.CODESPEC_KIND_WORKER else "job",
            s.image,
            s.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        )
        for s in items
    ]
    click.echo(table(["NAME", "VERSION", "KIND", "IMAGE", "CREATED"], rows))


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error is one line on stderr and a non-zero exit code."""
    try:
        cli.main(args=argv, prog_name="muster", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx:
            click.echo(exc.ctx.get_help())
            sys.exit(2)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}", 2)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message())
    except SpecError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
