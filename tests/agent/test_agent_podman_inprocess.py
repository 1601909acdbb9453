"""The agent loop in-process on real Podman: host-port addresses, failures, loop health."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import BUSYBOX, PYTHON, PodmanNode, random_run_id, spec

pytestmark = pytest.mark.podman


async def test_host_port_worker_is_ready_at_advertise_address_and_host_port(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    lo = 32000 + secrets.randbelow(600)
    runtime = podman_node.runtime(
        network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 40)
    )
    await start_agent(
        runtime,
        node_name=podman_node.node,
        network=podman_node.network,
        network_mode="host-port",
        advertise_address="127.0.0.1",
    )
    await fake_cp.wait_registered()
    run_id = random_run_id()
    name = f"muster-run-{run_id}-worker-0"
    fake_cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_WORKER,
        replica=0,
        container_name=name,
        hostname=f"run-{run_id}-worker-0",
        image=PYTHON,
        command=["python3"],
        args=["-m", "http.server", "8000"],
        endpoints=[agent_pb2.EndpointPort(name="http", port=8000)],
    )
    ready = await fake_cp.wait_status(name, run_pb2.CONTAINER_STATE_RUNNING, ready=True, within=30)
    (endpoint,) = ready.endpoints
    host, port = endpoint.address.rsplit(":", 1)
    assert endpoint.name == "http" and host == "127.0.0.1" and lo <= int(port) <= lo + 40
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.0 200")
    writer.close()
    await writer.wait_closed()


async def test_missing_image_on_podman_fails_without_pulling(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    await start_agent(
        podman_node.runtime(), node_name=podman_node.node, network=podman_node.network
    )
    await fake_cp.wait_registered()
    run_id = random_run_id()
    image = f"localhost/muster-missing-{secrets.token_hex(4)}:latest"
    name = f"muster-run-{run_id}-job-0"
    fake_cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_JOB,
        container_name=name,
        image=image,
        pull_policy=run_pb2.PULL_POLICY_NEVER,
    )
    failed = await fake_cp.wait_status(name, run_pb2.CONTAINER_STATE_FAILED, within=15)
    assert failed.message.startswith(f"image '{image}' not found on node '{podman_node.node}'")
    assert "the pull policy is never" in failed.message
    assert not await podman_node.exists(name)


async def test_slow_podman_calls_never_stall_the_event_loop(podman_node: PodmanNode) -> None:
    """A stop that waits out its timeout runs in a thread; the loop keeps ticking."""
    rt = podman_node.runtime(stop_timeout=1)
    run_id = random_run_id()
    # sh ignores SIGTERM (and init only signals sh), so stop waits the full timeout.
    stubborn = spec(run_id, "job", 0, BUSYBOX, ["sh", "-c"], ["trap '' TERM; sleep 300 & wait"])
    await rt.start(stubborn)

    loop = asyncio.get_running_loop()
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before - 0.01)

    ticking = asyncio.create_task(ticker())
    began = loop.time()
    try:
        await rt.remove_run(run_id)
    finally:
        ticking.cancel()
    assert loop.time() - began >= 0.9, "the stop really waited for its timeout"
    assert worst < 0.25, f"event loop stalled for {worst:.3f}s"
