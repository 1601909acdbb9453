"""The agent's /metrics endpoint (--metrics-listen): containers by state and
runtime call latency by method, read over real HTTP while a run is going."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from agent.runtime_fake import FakeRuntime
from muster.v1 import run_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane
from tests.agent.test_agent_protocol import job
from tests.conftest import free_port

RUNNING = run_pb2.CONTAINER_STATE_RUNNING


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            assert reply.status == 200
            return await reply.text()


def value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_metrics_show_containers_and_runtime_calls(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    port = free_port()
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime, metrics_listen=f"127.0.0.1:{port}")
    await fake_cp.wait_registered()
    fake_cp.start_container(**job(41, args=["sleep 100"]))
    await fake_cp.wait_status("muster-run-41-job-0", RUNNING)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the state is read at each scrape: wait for the next watch round
        text = await scrape(port)
        if value(text, "muster_agent_containers", state="running") == 1:
            break
        assert loop.time() < deadline, text
        await asyncio.sleep(0.05)
    calls = "muster_agent_runtime_call_duration_seconds_count"
    assert value(text, calls, method="start") == 1
    assert value(text, calls, method="list_managed") >= 1
