"""`muster codespec create|show|list`."""

from __future__ import annotations

from typing import Any

import click

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster_cli.app import (
    CONTEXT,
    COUNT,
    POSITIVE,
    address,
    cli,
    format_option,
    key_values,
    server_option,
)
from muster_cli.client import channel, collect_pages, fail, with_retries
from muster_cli.output import dump, table, to_dict
from muster_cli.specfile import load_codespec


@cli.group()
def codespec() -> None:
    """Create and inspect versioned codespecs."""


@codespec.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.argument("extra", nargs=-1, metavar="[-- ARGS...]")
@click.option("-f", "--file", "file", help="Codespec YAML file (flags override its values).")
@click.option("--image", help="Container image (must exist on the nodes).")
@click.option("-k", "--kind", type=click.Choice(["job", "worker"]), help="Kind (default job).")
@click.option("--max-replicas", type=POSITIVE, help="Upper bound on replicas.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable.")
@click.option("--endpoint", multiple=True, metavar="NAME=PORT", help="Worker endpoint.")
@click.option("-i", "--input", "inputs", multiple=True, help="Input buffer name.")
@click.option("-o", "--output", "outputs", multiple=True, help="Output buffer name.")
@click.option("--cpu-request", help="CPU request, e.g. 500m or 2.")
@click.option("--memory-request", help="Memory request, e.g. 512Mi.")
@click.option("--cpu-limit", help="CPU limit.")
@click.option("--memory-limit", help="Memory limit.")
@click.option("--gpu", type=COUNT, help="GPUs per replica.")
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
        stub = cgrpc.CodespecServiceStub(ch)
        request = cpb.CreateCodespecRequest(codespec=spec)
        # Safe to repeat: creating a codespec equal to the latest version returns that version.
        reply = with_retries(lambda: stub.CreateCodespec(request, timeout=30))
    if fmt == "table":
        click.echo(reply.codespec.version)
    else:
        click.echo(dump(to_dict(reply.codespec), fmt))


def port_number(text: str) -> int:
    """A TCP port for --endpoint NAME=PORT."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def apply_codespec_flags(spec: cpb.Codespec, flags: dict[str, Any], extra: tuple[str, ...]) -> None:
    """Flags override values read from a file."""
    if flags["image"]:
        spec.image = flags["image"]
    if flags["kind"]:
        spec.kind = cpb.CODESPEC_KIND_WORKER if flags["kind"] == "worker" else cpb.CODESPEC_KIND_JOB
    if flags["max_replicas"] is not None:
        spec.max_replicas = flags["max_replicas"]
    spec.env.update(key_values(flags["env"], "--env"))
    spec.endpoints.update(key_values(flags["endpoint"], "--endpoint", port_number))
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
@click.option("--version", type=POSITIVE, help="Exact version (default latest).")
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
@click.option("--limit", type=POSITIVE, default=1000, show_default=True)
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
