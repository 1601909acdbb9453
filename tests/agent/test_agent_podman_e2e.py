"""The real ``python -m agent`` process on real Podman, driven by a fake control plane."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import pytest

from muster.v1 import agent_pb2, node_pb2, run_pb2
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import BUSYBOX, PODMAN_URL, PYTHON, PodmanNode, random_run_id

pytestmark = pytest.mark.podman

RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED


class AgentProcess:
    """``python -m agent`` as a child process, logging into a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Spawn the agent (appending to the log file)."""
        with self.log.open("a") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", *self.args, stdout=out, stderr=out
            )

    async def terminate(self, within: float = 10.0) -> int:
        """SIGTERM and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), within)

    async def kill(self) -> None:
        """Make sure the process is gone (test cleanup)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def output(self) -> str:
        """The agent's log so far (for failure messages)."""
        return self.log.read_text() if self.log.exists() else ""


def agent_args(node: PodmanNode, cp: FakeControlPlane) -> list[str]:
    """The command line of an agent for ``node`` that reports to ``cp``."""
    return [
        "--insecure", "--server", cp.address,
        "--node-name", node.node,
        "--network", node.network,
        "--podman-url", PODMAN_URL,
        "--pool", "cpu",
        "--cpus", "2",
        "--memory", "1Gi",
        "--poll-interval", "0.2",
        "--log-level", "DEBUG",
    ]  # fmt: skip


def start_worker_and_job(cp: FakeControlPlane, run_id: int) -> tuple[str, str]:
    """Have ``cp`` start a serving worker and a sleeping job of ``run_id``; their names."""
    worker_name, job_name = f"muster-run-{run_id}-worker-0", f"muster-run-{run_id}-job-0"
    cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_WORKER,
        replica=0,
        container_name=worker_name,
        hostname=f"run-{run_id}-worker-0",
        image=PYTHON,
        command=["python3"],
        args=["-m", "http.server", "8000"],
        endpoints=[agent_pb2.EndpointPort(name="http", port=8000)],
    )
    cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_JOB,
        replica=0,
        container_name=job_name,
        hostname=f"run-{run_id}-job-0",
        image=BUSYBOX,
        command=["sleep"],
        args=["300"],
    )
    return worker_name, job_name


async def test_agent_process_lifecycle_on_podman(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    agent = AgentProcess(agent_args(podman_node, fake_cp), tmp_path / "agent.log")
    run_id = random_run_id()
    try:
        await agent.start()
        stream = await fake_cp.wait_registered(within=20)
        reg = stream.register
        assert reg is not None
        assert (reg.node_name, list(reg.pools)) == (podman_node.node, ["cpu"])
        assert reg.allocatable == node_pb2.Capacity(cpu_millis=2000, memory_bytes=2**30)
        assert reg.network_name == podman_node.network and list(reg.containers) == []

        worker_name, job_name = start_worker_and_job(fake_cp, run_id)
        ready = await fake_cp.wait_status(worker_name, RUNNING, ready=True, within=30)
        assert [(e.name, e.address) for e in ready.endpoints] == [
            ("http", f"run-{run_id}-worker-0:8000")
        ]
        await fake_cp.wait_status(job_name, RUNNING, ready=True, within=30)

        # Killed behind the agent's back: the exit code reaches the control plane.
        await asyncio.to_thread(podman_node.client.containers.get(job_name).kill)
        killed = await fake_cp.wait_status(job_name, EXITED, within=10)
        assert killed.exit_code == 137

        # SIGTERM: the agent exits cleanly and leaves the containers alone.
        assert await agent.terminate() == 0
        attrs = await podman_node.inspect(worker_name)
        assert attrs["State"]["Status"] == "running"

        # A new agent re-adopts them: no duplicates, readiness and exit codes intact.
        await agent.start()
        stream = await fake_cp.wait_registered(count=2, within=20)
        assert stream.register is not None
        by_name = {c.container_name: c for c in stream.register.containers}
        assert set(by_name) == {worker_name, job_name}
        assert (by_name[worker_name].state, by_name[worker_name].ready) == (RUNNING, True)
        assert (by_name[job_name].state, by_name[job_name].exit_code) == (EXITED, 137)
        assert (await podman_node.inspect(worker_name))["Id"] == attrs["Id"]

        fake_cp.teardown(run_id)
        for name in (worker_name, job_name):
            await fake_cp.wait_status(name, REMOVED, stream=stream, within=15)
            assert not await podman_node.exists(name)
    except BaseException:
        print(agent.output())
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            await agent.kill()
