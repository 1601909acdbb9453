"""The control plane's /metrics endpoint (--metrics-listen), scraped over
real HTTP while a distributed run goes through fake-runtime agents: RPC and
store latencies by method (and status code), scheduling and release
latencies, runs by status and the pending queue, connected agents."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from controlplane.server import ControlPlane, start
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    SETTINGS,
    Fleet,
    container_of,
    create_run,
    get_run,
    setup_codespecs,
    until,
)


@pytest.fixture
async def measured(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Fleet, str]]:
    address = f"127.0.0.1:{free_port()}"
    plane = await start(address, tmp_path / "cp.db", SETTINGS, metrics_listen="127.0.0.1:0")
    fleet = Fleet(address)
    try:
        yield plane, fleet, address
    finally:
        await fleet.close()
        await plane.stop(grace=0.2)


async def scrape(plane: ControlPlane) -> str:
    assert plane.metrics is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{plane.metrics.port}/metrics") as reply:
            assert reply.status == 200
            return await reply.text()


def value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$" if labels else None
    match = re.search(pattern or rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.groups()[-1]) if match else 0.0


async def test_a_run_shows_in_the_metrics(measured) -> None:
    plane, fleet, address = measured
    await setup_codespecs(address)
    cpu, _ = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await until(lambda: plane.orchestrator.connected_count() == 2, 10, "both agents")
    await plane.orchestrator.cordon_node("n-gpu")
    pending = await create_run(address, workers=2)  # its workers' node is cordoned: it waits
    text = await scrape(plane)
    assert value(text, "muster_runs_pending") == 1
    assert value(text, "muster_runs_active", status="Pending") == 1
    await plane.orchestrator.uncordon_node("n-gpu")
    job = container_of(await get_run(address, pending), "job")
    await until(lambda: job in cpu.containers, 10, "the job's release")
    cpu.exit(job, 0)

    async def succeeded() -> bool:
        return (await get_run(address, pending)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 10, "the run to succeed")
    async with grpc.aio.insecure_channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await rgrpc.RunServiceStub(ch).GetRun(rpb.GetRunRequest(run_id=999))
    text = await scrape(plane)
    rpc = "muster_rpc_duration_seconds_count"
    assert value(text, rpc, method="CreateRun", code="OK") == 1
    assert value(text, rpc, method="GetRun", code="NOT_FOUND") == 1
    assert value(text, rpc, method="GetRun", code="OK") >= 2
    assert value(text, "muster_store_call_duration_seconds_count", method="insert_run") == 1
    assert value(text, "muster_run_scheduling_seconds_count") == 1
    assert value(text, "muster_run_release_seconds_count") == 1
    assert value(text, "muster_runs_finished_total", status="Succeeded") == 1
    assert value(text, "muster_runs_pending") == 0
    assert value(text, "muster_agents_connected") == 2
    assert value(text, "muster_nodes", status="Ready") == 2
    # Agent traffic: each of the run's 3 containers was started once, and
    # every state the agents reported was counted, batched or not.
    received = {
        kind: value(text, "muster_agent_messages_received_total", kind=kind)
        for kind in ("register", "container_status", "container_statuses")
    }
    assert received["register"] == 2
    assert received["container_status"] + received["container_statuses"] >= 1
    assert value(text, "muster_agent_container_starts_total") == 3
    states = value(text, "muster_agent_container_statuses_total")
    assert states >= 3 * 2  # at least running and exited or removed per container
    sent = value(text, "muster_agent_messages_sent_total", kind="start_containers") + value(
        text, "muster_agent_messages_sent_total", kind="start_container"
    )
    assert 1 <= sent <= 3
    assert value(text, "muster_agent_messages_sent_total", kind="registered") == 2
