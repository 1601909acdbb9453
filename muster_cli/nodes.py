"""`muster node list`."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from muster.v1 import node_pb2 as pb
from muster.v1 import node_pb2_grpc as pb_grpc
from muster_cli.app import CONTEXT, address, cli, format_option, server_option
from muster_cli.auth import ttl_seconds
from muster_cli.client import channel
from muster_cli.output import dump, enum_text, human_cpu, human_memory, table, to_dict


@cli.group()
def node() -> None:
    """Inspect the machines whose agents are known."""


@node.group("join-token")
def join_token() -> None:
    """Single-use tokens with which a new machine's agent joins."""


@join_token.command("create", context_settings=CONTEXT)
@click.option(
    "--pool", "pools", multiple=True, required=True, help="Pool the node may join (repeatable)."
)
@click.option("--ttl", default="1h", show_default=True, metavar="DURATION", help="Lifetime.")
@server_option
@click.pass_context
def join_token_create(
    ctx: click.Context, pools: tuple[str, ...], ttl: str, leaf_server: str | None
) -> None:
    """Print a join token for `muster-agent --join-token` (usable once)."""
    request = pb.CreateJoinTokenRequest(pools=list(pools), ttl_seconds=ttl_seconds(ttl) or 1)
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.NodeServiceStub(ch).CreateJoinToken(request, timeout=15)
    click.echo(reply.join_token)


@node.command("remove", context_settings=CONTEXT)
@click.argument("name")
@server_option
@click.pass_context
def node_remove(ctx: click.Context, name: str, leaf_server: str | None) -> None:
    """Revoke a node's certificate, cut its agent off, fail its runs, forget it."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.NodeServiceStub(ch).RemoveNode(pb.RemoveNodeRequest(name=name), timeout=15)
    failed = ", ".join(str(i) for i in reply.failed_run_ids) or "none"
    click.echo(f"node '{name}' removed; runs failed: {failed}")


@node.command("list", context_settings=CONTEXT)
@click.option("--pool", default="", help="Only nodes in this pool.")
@format_option("-o", "--output")
@server_option
@click.pass_context
def node_list(ctx: click.Context, pool: str, fmt: str, leaf_server: str | None) -> None:
    """List nodes: pools, status, capacity, allocation and heartbeat age."""
    with channel(address(ctx, leaf_server)) as ch:
        reply = pb_grpc.NodeServiceStub(ch).ListNodes(pb.ListNodesRequest(pool=pool), timeout=30)
    if fmt != "table":
        click.echo(dump([to_dict(n) for n in reply.nodes], fmt))
        return
    now = datetime.now(UTC)
    rows = []
    for n in reply.nodes:
        age = (now - n.last_heartbeat.ToDatetime(tzinfo=UTC)).total_seconds()
        rows.append(
            (
                n.name,
                ",".join(n.pools),
                enum_text(pb.NodeStatus.Name(n.status)),
                f"{human_cpu(n.allocated.cpu_millis)}/{human_cpu(n.allocatable.cpu_millis)}",
                f"{human_memory(n.allocated.memory_bytes)}/{human_memory(n.allocatable.memory_bytes)}",
                f"{n.allocated.gpus}/{n.allocatable.gpus}",
                n.replica_count,
                enum_text(pb.NetworkMode.Name(n.network_mode)),
                f"{age:.0f}s",
            )
        )
    click.echo(
        table(
            ["NAME", "POOLS", "STATUS", "CPU", "MEMORY", "GPU", "REPLICAS", "NETWORK", "HEARTBEAT"],
            rows,
        )
    )
