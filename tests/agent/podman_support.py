"""Helpers for tests against the real Podman API socket.

Every test gets its own node name and network (``muster-test-<random>``), and
the fixture removes every container labelled with that node, and the network,
in ``finally`` - so nothing is left behind even when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from podman import PodmanClient
from podman.errors import APIError, NotFound

from agent.runtime import ContainerInfo, ContainerSpec, Runtime, State
from agent.runtime_podman import PodmanRuntime
from tests.waiting import until

PODMAN_URL = os.environ.get("MUSTER_PODMAN_URL", "unix:///run/podman/podman.sock")
BUSYBOX = "localhost/muster-busybox:latest"
PYTHON = "localhost/muster-python:latest"


def random_run_id() -> int:
    """A run id no other test (or the control plane's tests) will use."""
    return secrets.randbelow(10**12) + 10**12


def _client_or_skip_reason() -> str | None:
    path = PODMAN_URL.removeprefix("unix://")
    if PODMAN_URL.startswith("unix://") and not os.path.exists(path):
        return f"no Podman API socket at {PODMAN_URL} (run scripts/setup.sh)"
    try:
        with PodmanClient(base_url=PODMAN_URL) as client:
            missing = [i for i in (BUSYBOX, PYTHON) if not client.images.exists(i)]
    except Exception as exc:  # socket present but service down
        return f"Podman API at {PODMAN_URL} unusable: {exc}"
    if missing:
        return f"test images missing: {missing} (run scripts/images.sh)"
    return None


def require_podman() -> None:
    """Skip the test when Podman or the test images are not available."""
    reason = _client_or_skip_reason()
    if reason:
        pytest.skip(reason)


@dataclass
class PodmanNode:
    """A test's private slice of Podman: its node name, network and runtimes."""

    node: str
    network: str
    client: PodmanClient
    runtimes: list[PodmanRuntime] = field(default_factory=list)

    def runtime(self, **kwargs: Any) -> PodmanRuntime:
        """A PodmanRuntime for this node (closed by the fixture)."""
        kwargs.setdefault("node_name", self.node)
        rt = PodmanRuntime(url=PODMAN_URL, network_name=self.network, **kwargs)
        self.runtimes.append(rt)
        return rt

    async def inspect(self, name: str) -> dict[str, Any]:
        """Raw ``podman inspect`` attributes (off the event loop)."""

        def get() -> dict[str, Any]:
            return self.client.containers.get(name).attrs

        return await asyncio.to_thread(get)

    async def exists(self, name: str) -> bool:
        """Whether a container named ``name`` exists."""
        return await asyncio.to_thread(self.client.containers.exists, name)

    async def cleanup(self) -> None:
        """Remove this node's containers and network; close runtimes."""

        nodes = {self.node} | {rt.node_name for rt in self.runtimes}

        def remove_all() -> None:
            for node in nodes:
                for c in self.client.containers.list(
                    all=True, filters=[f"label=muster.node={node}"]
                ):
                    try:
                        c.remove(force=True)
                    except (APIError, NotFound):
                        pass
            try:
                self.client.networks.get(self.network).remove(force=True)
            except (APIError, NotFound):
                pass

        try:
            await asyncio.to_thread(remove_all)
        finally:
            for rt in self.runtimes:
                await rt.close()
            self.client.close()


def new_podman_node() -> PodmanNode:
    """A PodmanNode with a random node name and network (skips without Podman)."""
    require_podman()
    suffix = secrets.token_hex(4)
    return PodmanNode(
        node=f"test-node-{suffix}",
        network=f"muster-test-{suffix}",
        client=PodmanClient(base_url=PODMAN_URL),
    )


def spec(
    run_id: int,
    role: str,
    replica: int,
    image: str,
    command: list[str],
    args: list[str],
    **extra: Any,
) -> ContainerSpec:
    """A ContainerSpec with muster's deterministic name and hostname."""
    return ContainerSpec(
        run_id=run_id,
        role=role,  # type: ignore[arg-type]
        replica=replica,
        name=f"muster-run-{run_id}-{role}-{replica}",
        hostname=f"run-{run_id}-{role}-{replica}",
        image=image,
        command=command,
        args=args,
        **extra,
    )


async def wait_for_state(
    runtime: Runtime, name: str, state: State, within: float = 30.0
) -> ContainerInfo:
    """Poll ``list_managed`` until ``name`` is in ``state``; fail after ``within`` s."""
    return await wait_until(
        lambda infos: next((i for i in infos if i.name == name and i.state == state), None),
        runtime,
        within,
        f"{name} {state}",
    )


async def wait_until(
    pick: Callable[[list[ContainerInfo]], ContainerInfo | None],
    runtime: Runtime,
    within: float,
    what: str,
) -> ContainerInfo:
    """Poll ``list_managed`` until ``pick`` returns an info."""

    async def found() -> ContainerInfo | None:
        return pick(await runtime.list_managed())

    info: ContainerInfo = await until(found, within, what, 0.1)
    return info


async def wait_probe(runtime: Runtime, info: ContainerInfo, within: float = 30.0) -> None:
    """Probe every endpoint of ``info`` until all accept; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    targets = runtime.endpoint_targets(info)
    assert targets, "no endpoints to probe"
    while True:
        results = [await runtime.probe(t) for t in targets]
        if all(results):
            return
        if loop.time() > deadline:
            raise AssertionError(f"endpoints {targets} not accepting after {within}s")
        await asyncio.sleep(0.1)
