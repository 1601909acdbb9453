"""`muster codespec create|show|list`."""

from __future__ import annotations

from typing import Any

import click

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster_cli.app import (
    CONTEXT,
    POSITIVE,
    AliasGroup,
    address,
    cli,
    comma_list,
    comma_pairs,
    format_option,
    key_values,
    server_option,
)
from muster_cli.client import channel, collect_pages, fail, with_retries
from muster_cli.output import codespec_dict, dump, table
from muster_cli.specfile import (
    COUNT,
    NO_IDENTITY,
    SpecError,
    check,
    kind_from_text,
    load_codespec,
)


class DashCommand(click.Command):
    """A command whose container arguments follow `--`, as in Tyger: what comes
    after the first `--` is kept apart (ctx.meta["dash_args"], None without
    `--`), so `create -f spec.yaml -- prog args` takes the name from the file."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["dash_args"] = args[at + 1 :]
            args = args[:at]
        else:
            ctx.meta["dash_args"] = None
        return super().parse_args(ctx, args)


@cli.group(cls=AliasGroup)
def codespec() -> None:
    """Create and inspect versioned codespecs."""


codespec.alias("get", "show")  # type: ignore[attr-defined]  # an AliasGroup (muster_cli.app)


@codespec.command("create", cls=DashCommand, context_settings=CONTEXT)
@click.argument("name", required=False)
@click.argument("extra", nargs=-1, metavar="[-- ARGS...]")
@click.option("-f", "--file", "file", help="Codespec YAML file (flags override its values).")
@click.option("--image", help="Container image.")
@click.option(
    "-k",
    "--kind",
    type=click.Choice(["job", "worker"], case_sensitive=False),
    help="Kind (default job); a kind in the file wins, as in Tyger.",
)
@click.option("-r", "--max-replicas", type=POSITIVE, help="Upper bound on replicas.")
@click.option(
    "-e", "--env", multiple=True, metavar="K=V", help="Environment variable; replaces the file's."
)
@click.option("--endpoint", multiple=True, metavar="NAME=PORT", help="Worker endpoint.")
@click.option("-i", "--input", "inputs", multiple=True, help="Input buffer names (a,b).")
@click.option("-o", "--output", "outputs", multiple=True, help="Output buffer names (a,b).")
@click.option("--identity", help="Tyger's workload identity: not supported (refused).")
@click.option("--cpu-request", help="CPU request, e.g. 500m or 2.")
@click.option("--memory-request", help="Memory request, e.g. 512Mi.")
@click.option("--cpu-limit", help="CPU limit.")
@click.option("--memory-limit", help="Memory limit.")
@click.option("--gpu", metavar="QUANTITY", help="GPUs per replica (a whole number).")
@click.option("--shm", metavar="QUANTITY", help="Size of /dev/shm, e.g. 1Gi.")
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
    name: str | None,
    extra: tuple[str, ...],
    file: str | None,
    leaf_server: str | None,
    fmt: str,
    **flags: Any,
) -> None:
    """Create a codespec version; prints the version number.

    NAME may be left out when the file has a name (NAME wins over it). An
    identical codespec returns the latest version unchanged.
    """
    if extra:
        fail(
            f"unexpected arguments {list(extra)}: container arguments go at the end, after --",
            2,
        )
    spec = load_codespec(file) if file else cpb.Codespec()
    if name:
        spec.name = name
    elif not spec.name:
        fail(
            "a codespec name is required: give NAME"
            + (f" or a name in {file}" if file else " (or -f FILE with a name)"),
            2,
        )
    apply_codespec_flags(spec, flags, ctx.meta["dash_args"])
    with channel(address(ctx, leaf_server)) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        request = cpb.CreateCodespecRequest(codespec=spec)
        # Safe to repeat: creating a codespec equal to the latest version returns that version.
        reply = with_retries(lambda: stub.CreateCodespec(request, timeout=30))
    if fmt == "table":
        click.echo(reply.codespec.version)
    else:
        click.echo(dump(codespec_dict(reply.codespec), fmt))


def port_number(text: str) -> int:
    """A TCP port for --endpoint NAME=PORT."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def gpu_flag(text: str) -> int:
    """--gpu takes a quantity, as in Tyger; muster hands out whole GPUs."""
    try:
        return check(text, COUNT, "--gpu")
    except SpecError as exc:
        raise click.BadParameter(str(exc).removeprefix("--gpu: "), param_hint="--gpu") from None


def apply_codespec_flags(
    spec: cpb.Codespec, flags: dict[str, Any], dash_args: list[str] | None
) -> None:
    """Flags override the file, as in Tyger: --env, --endpoint, -i and -o
    replace the file's map or list; a kind in the file wins over --kind."""
    if flags["identity"]:
        raise click.BadParameter(NO_IDENTITY, param_hint="--identity")
    if flags["image"]:
        spec.image = flags["image"]
    if flags["kind"] and spec.kind == cpb.CODESPEC_KIND_UNSPECIFIED:
        spec.kind = kind_from_text(flags["kind"], "--kind")  # type: ignore[assignment]  # the enum value kind_from_text checked
    if flags["max_replicas"] is not None:
        spec.max_replicas = flags["max_replicas"]
    if flags["env"]:
        spec.env.clear()
        spec.env.update(key_values(comma_pairs(flags["env"]), "--env"))
    if flags["endpoint"]:
        spec.endpoints.clear()
        spec.endpoints.update(key_values(comma_pairs(flags["endpoint"]), "--endpoint", port_number))
    for flag, group in (("inputs", spec.buffers.inputs), ("outputs", spec.buffers.outputs)):
        if flags[flag]:
            del group[:]
            group.extend(comma_list(flags[flag]))
    for flag, section, key in (
        ("cpu_request", "requests", "cpu"),
        ("memory_request", "requests", "memory"),
        ("cpu_limit", "limits", "cpu"),
        ("memory_limit", "limits", "memory"),
    ):
        if flags[flag]:
            setattr(getattr(spec.resources, section), key, flags[flag])
    if flags["gpu"] is not None:
        spec.resources.gpu = gpu_flag(flags["gpu"])
    if flags["shm"]:
        spec.resources.shm = flags["shm"]
    if flags["working_dir"]:
        spec.working_dir = flags["working_dir"]
    if dash_args is not None:
        target = spec.command if flags["is_command"] else spec.args
        del target[:]
        target.extend(dash_args)
    elif flags["is_command"]:
        raise click.BadParameter("give the command after --", param_hint="--command")


@codespec.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--version", type=POSITIVE, help="Exact version (default latest).")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["json", "yaml"]),
    default="json",
    show_default=True,
    help="Output format (JSON, as Tyger prints it).",
)
@server_option
@click.pass_context
def codespec_show(
    ctx: click.Context, name: str, version: int | None, fmt: str, leaf_server: str | None
) -> None:
    """Show a codespec (latest version unless --version); `create -f` reads it back."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = cgrpc.CodespecServiceStub(ch).GetCodespec(
            cpb.GetCodespecRequest(name=name, version=version or 0), timeout=30
        )
    click.echo(dump(codespec_dict(reply.codespec), fmt))


@codespec.command("list", context_settings=CONTEXT)
@click.option("-p", "--prefix", default="", help="Only names starting with this.")
@click.option(
    "--order",
    type=click.Choice(["name", "newest"]),
    default="name",
    show_default=True,
    help="Alphabetical (as Tyger) or names created most recently first.",
)
@click.option("-l", "--limit", type=POSITIVE, default=1000, show_default=True)
@format_option("-o", "--output")
@server_option
@click.pass_context
def codespec_list(
    ctx: click.Context, prefix: str, order: str, limit: int, fmt: str, leaf_server: str | None
) -> None:
    """List codespecs (latest version of each)."""
    order_pb = cpb.CODESPEC_ORDER_NAME if order == "name" else cpb.CODESPEC_ORDER_NEWEST_FIRST
    with channel(address(ctx, leaf_server)) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        items = collect_pages(
            lambda **r: stub.ListCodespecs(cpb.ListCodespecsRequest(**r), timeout=30),
            "codespecs",
            limit,
            prefix=prefix,
            order=order_pb,
        )
    if fmt != "table":
        click.echo(dump([codespec_dict(s) for s in items], fmt))
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
