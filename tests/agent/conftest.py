"""Fixtures for agent tests: a fake control plane and an in-process agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from agent.app import run_agent
from agent.config import AgentConfig
from agent.connection import Backoff
from agent.runtime import Runtime
from agent.runtime_fake import FakeRuntime
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import PodmanNode, new_podman_node
from tests.waiting import until

FAST = {"poll_interval": 0.02, "probe_interval": 0.01}
"""Short periods so state changes arrive within milliseconds."""


async def eventually(
    predicate: Callable[[], object], within: float = 5.0, what: str = "", interval: float = 0.01
) -> None:
    """Re-check ``predicate`` every ``interval`` until true; fail after ``within`` seconds.

    For state that notifies nobody (fake runtime counters, log records).
    """
    await until(predicate, within, what or str(predicate), interval)


@pytest.fixture
async def fake_cp() -> AsyncIterator[FakeControlPlane]:
    """A fake control plane on a free port, stopped after the test."""
    cp = FakeControlPlane(heartbeat_seconds=1)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@dataclass
class RunningAgent:
    """An agent running in this event loop; ``stop()`` is its SIGTERM."""

    config: AgentConfig
    runtime: Runtime
    task: asyncio.Task[None]
    stop_event: asyncio.Event

    async def stop(self) -> None:
        """Stop gracefully and re-raise anything the agent crashed with."""
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10)


StartAgent = Callable[..., Awaitable[RunningAgent]]


def agent_config(server: str, **overrides: object) -> AgentConfig:
    """A config for tests: fixed capacity and fast polling."""
    base = AgentConfig(
        node_name="node-a",
        server=server,
        pools=("cpu", "gpu"),
        labels={"zone": "a"},
        cpu_millis=4000,
        memory_bytes=8 * 2**30,
        gpus=2,
        advertise_address="10.1.2.3",
        insecure=True,
        **FAST,  # type: ignore[arg-type]
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def start_agent(fake_cp: FakeControlPlane) -> AsyncIterator[StartAgent]:
    """Factory: start an agent (fake runtime unless given) against ``fake_cp``."""
    agents: list[RunningAgent] = []

    async def start(runtime: Runtime | None = None, **overrides: object) -> RunningAgent:
        config = agent_config(fake_cp.address, **overrides)
        runtime = runtime or FakeRuntime(node_name=config.node_name)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_agent(config, runtime=runtime, stop=stop, backoff=Backoff(0.02, 0.2))
        )
        agent = RunningAgent(config, runtime, task, stop)
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop_event.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.task, 10)


@pytest.fixture
async def podman_node() -> AsyncIterator[PodmanNode]:
    """A private node name + network on the real Podman; everything removed afterwards."""
    node = new_podman_node()
    try:
        yield node
    finally:
        await node.cleanup()
