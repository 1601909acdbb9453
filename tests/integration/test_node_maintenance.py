"""Cordon, drain and uncordon over real gRPC, with real agents on the fake
runtime: a draining node gets no new run and lets its running run finish, the
drain deadline cancels what is left, and all of it survives a control plane
restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controlplane.server import ControlPlane, start
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    SETTINGS,
    Fleet,
    container_of,
    get_run,
    setup_codespecs,
    until,
)


@pytest.fixture
async def maintained(tmp_path: Path) -> AsyncIterator[tuple[list[ControlPlane], Fleet, str]]:
    """A control plane with two agents in pool cpu, n-a and n-b, both Ready."""
    address = f"127.0.0.1:{free_port()}"
    planes = [await start(address, tmp_path / "cp.db", SETTINGS)]
    fleet = Fleet(address)
    try:
        fleet.add("n-a", "cpu")
        fleet.add("n-b", "cpu")
        await until(lambda: ready(address, "n-a", "n-b"), 10, "both nodes Ready")
        await setup_codespecs(address)
        yield planes, fleet, address
    finally:
        await fleet.close()
        await planes[-1].stop(grace=0.2)


async def nodes(address: str) -> dict[str, npb.Node]:
    async with grpc.aio.insecure_channel(address) as ch:
        reply = await ngrpc.NodeServiceStub(ch).ListNodes(npb.ListNodesRequest())
    return {n.name: n for n in reply.nodes}


async def ready(address: str, *names: str) -> bool:
    listed = await nodes(address)
    return all(n in listed and listed[n].status == npb.NODE_STATUS_READY for n in names)


async def maintain(address: str, verb: str, name: str, deadline: int = 0) -> npb.Node:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = ngrpc.NodeServiceStub(ch)
        if verb == "cordon":
            return (await stub.CordonNode(npb.CordonNodeRequest(name=name))).node
        if verb == "uncordon":
            return (await stub.UncordonNode(npb.UncordonNodeRequest(name=name))).node
        request = npb.DrainNodeRequest(name=name, deadline_seconds=deadline)
        return (await stub.DrainNode(request)).node


async def create_job(address: str) -> int:
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"))
    async with grpc.aio.insecure_channel(address) as ch:
        return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=run))).run.id


async def placed_on(address: str, run_id: int) -> str:
    """The node the run's job runs on, once its container runs there."""

    async def running() -> str:
        run = await get_run(address, run_id)
        job = run.replicas[0]
        return job.node_name if job.state == rpb.CONTAINER_STATE_RUNNING else ""

    await until(running, 10, f"run {run_id} running")
    return await running()


async def test_drain_finishes_its_run_places_elsewhere_and_uncordon_restores(maintained) -> None:
    _, fleet, address = maintained
    a = fleet.runtimes["n-a"]
    await maintain(address, "cordon", "n-b")
    first = await create_job(address)
    assert await placed_on(address, first) == "n-a"
    await maintain(address, "uncordon", "n-b")

    node = await maintain(address, "drain", "n-a")
    assert (node.cordoned, node.draining, node.replica_count) == (True, True, 1)
    assert not node.HasField("drain_deadline")
    second = await create_job(address)
    assert await placed_on(address, second) == "n-b"  # no new run on the draining node
    assert (await get_run(address, first)).status == rpb.RUN_STATUS_RUNNING  # not disturbed

    a.exit(container_of(await get_run(address, first), "job"), 0)

    async def drained() -> bool:
        n = (await nodes(address))["n-a"]
        return n.cordoned and not n.draining and n.HasField("drained_at")

    await until(drained, 10, "the drain of n-a to complete")
    assert (await get_run(address, first)).status == rpb.RUN_STATUS_SUCCEEDED
    await until(lambda: not a.containers, 10, "n-a emptied")

    await maintain(address, "cordon", "n-b")
    node = await maintain(address, "uncordon", "n-a")
    assert (node.cordoned, node.draining, node.HasField("drained_at")) == (False, False, False)
    assert await placed_on(address, await create_job(address)) == "n-a"  # schedulable again


async def test_drain_deadline_cancels_what_is_left(maintained) -> None:
    _, fleet, address = maintained
    a = fleet.runtimes["n-a"]
    await maintain(address, "cordon", "n-b")
    run_id = await create_job(address)
    assert await placed_on(address, run_id) == "n-a"
    node = await maintain(address, "drain", "n-a", deadline=1)
    assert node.draining and node.HasField("drain_deadline")

    async def canceled() -> rpb.Run | None:
        run = await get_run(address, run_id)
        return run if run.status == rpb.RUN_STATUS_CANCELED else None

    await until(canceled, 10, "the run to be canceled at the drain deadline")
    run = await get_run(address, run_id)
    assert run.status_reason == "node n-a was drained (deadline passed; job 0 placed there)"
    await until(lambda: not a.containers, 10, "the run's container removed from n-a")

    async def drained() -> bool:
        # The teardown goes out as soon as the cancel is stored; the node is
        # stored as drained right after, in the same round.
        return not (await nodes(address))["n-a"].draining

    await until(drained, 10, "n-a drained")
    listed = (await nodes(address))["n-a"]
    assert (listed.cordoned, listed.draining, listed.replica_count) == (True, False, 0)
    assert listed.HasField("drained_at") and not listed.HasField("drain_deadline")


async def test_cordon_and_drain_survive_a_control_plane_restart(maintained, tmp_path) -> None:
    planes, fleet, address = maintained
    b = fleet.runtimes["n-b"]
    await maintain(address, "cordon", "n-a")
    run_id = await create_job(address)
    assert await placed_on(address, run_id) == "n-b"
    await maintain(address, "drain", "n-b")

    await planes[0].stop(grace=0.2)
    planes.append(await start(address, tmp_path / "cp.db", SETTINGS))
    await until(lambda: ready(address, "n-a", "n-b"), 15, "both agents back")
    listed = await nodes(address)
    assert (listed["n-a"].cordoned, listed["n-a"].draining) == (True, False)
    assert (listed["n-b"].cordoned, listed["n-b"].draining) == (True, True)

    waiting = await create_job(address)  # admitted: cordon is temporary

    async def says_why() -> bool:
        run = await get_run(address, waiting)
        return run.status_reason == "waiting: every node of pool cpu is cordoned"

    await until(says_why, 10, "the new run to wait for a cordoned pool")
    assert (await get_run(address, waiting)).status == rpb.RUN_STATUS_PENDING
    b.exit(container_of(await get_run(address, run_id), "job"), 0)

    async def b_drained() -> bool:
        n = (await nodes(address))["n-b"]
        return not n.draining and n.HasField("drained_at")

    await until(b_drained, 10, "the drain of n-b to complete after the restart")
    await maintain(address, "uncordon", "n-a")
    assert await placed_on(address, waiting) == "n-a"


async def test_maintenance_errors(maintained) -> None:
    _, _, address = maintained
    for verb in ("cordon", "uncordon", "drain"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await maintain(address, verb, "nobody")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == (
            "The node 'nobody' was not found; `muster node list` shows them."
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await maintain(address, verb, "")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await maintain(address, "drain", "n-a", deadline=-5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline_seconds" in (err.value.details() or "")
