"""`muster node`: list, join tokens, cordon, drain, uncordon, remove."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from muster.v1 import node_pb2 as pb
from muster.v1 import node_pb2_grpc as pb_grpc
from muster_cli.app import CONTEXT, address, cli, format_option, server_option
from muster_cli.auth import ttl_seconds
from muster_cli.client import channel
from muster_cli.output import dump, enum_text, human_cpu, human_memory, table, to_dict, when
from muster_cli.timeparse import optional_duration


@cli.group()
def node() -> None:
    """Inspect and maintain the machines whose agents are known."""


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


def deadline_seconds(text: str | None) -> int:
    """Seconds of a --deadline value; 0 (no deadline) when not given."""
    return optional_duration(text, "--deadline", "30m, 1h, 2h30m")


@node.command("cordon", context_settings=CONTEXT)
@click.argument("name")
@server_option
@click.pass_context
def node_cordon(ctx: click.Context, name: str, leaf_server: str | None) -> None:
    """Place no new runs on a node; what runs there goes on."""
    with channel(address(ctx, leaf_server)) as ch:
        n = pb_grpc.NodeServiceStub(ch).CordonNode(pb.CordonNodeRequest(name=name), timeout=15).node
    click.echo(f"node '{name}' cordoned: no new runs are placed there; {_replicas(n)} stay")


@node.command("uncordon", context_settings=CONTEXT)
@click.argument("name")
@server_option
@click.pass_context
def node_uncordon(ctx: click.Context, name: str, leaf_server: str | None) -> None:
    """Make a node schedulable again (this also ends a drain)."""
    with channel(address(ctx, leaf_server)) as ch:
        pb_grpc.NodeServiceStub(ch).UncordonNode(pb.UncordonNodeRequest(name=name), timeout=15)
    click.echo(f"node '{name}' uncordoned: schedulable again")


@node.command("drain", context_settings=CONTEXT)
@click.argument("name")
@click.option(
    "--deadline",
    default=None,
    metavar="DURATION",
    help="Cancel the runs still on the node after this long (e.g. 1h); default: wait for them.",
)
@server_option
@click.pass_context
def node_drain(
    ctx: click.Context, name: str, deadline: str | None, leaf_server: str | None
) -> None:
    """Cordon a node and let its runs finish; cancel what is left at the deadline."""
    request = pb.DrainNodeRequest(name=name, deadline_seconds=deadline_seconds(deadline))
    with channel(address(ctx, leaf_server)) as ch:
        n = pb_grpc.NodeServiceStub(ch).DrainNode(request, timeout=15).node
    if not n.draining:
        click.echo(f"node '{name}' drained: no run has a replica there")
    elif n.HasField("drain_deadline"):
        click.echo(
            f"node '{name}' draining: {_replicas(n)} there; "
            f"runs still there at {when(n.drain_deadline)} are canceled"
        )
    else:
        click.echo(f"node '{name}' draining: {_replicas(n)} there; no deadline")


def _replicas(n: pb.Node) -> str:
    return f"{n.replica_count} replica" + ("" if n.replica_count == 1 else "s")


def status_text(n: pb.Node) -> str:
    """`Ready`, or with maintenance `Ready,Cordoned`, `Ready,Draining`, `Ready,Drained`."""
    status = enum_text(pb.NodeStatus.Name(n.status))
    if n.draining:
        return f"{status},Draining"
    if n.cordoned:
        return f"{status},{'Drained' if n.HasField('drained_at') else 'Cordoned'}"
    return status


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
                status_text(n),
                f"{human_cpu(n.allocated.cpu_millis)}/{human_cpu(n.allocatable.cpu_millis)}",
                f"{human_memory(n.allocated.memory_bytes)}/{human_memory(n.allocatable.memory_bytes)}",
                f"{n.allocated.gpus}/{n.allocatable.gpus}",
                n.replica_count,
                enum_text(pb.NetworkMode.Name(n.network_mode)),
                f"{age:.0f}s",
                ",".join(n.gpu_devices_in_use) or "-",
            )
        )
    headers = "NAME POOLS STATUS CPU MEMORY GPU REPLICAS NETWORK HEARTBEAT".split()
    if any(n.gpu_devices or n.gpu_devices_in_use for n in reply.nodes):
        headers.append("GPUS IN USE")  # only where some node has GPU devices
    click.echo(table(headers, [row[: len(headers)] for row in rows]))
