"""A real control plane and real agents over real gRPC, with the agents' fake
runtime: the whole protocol without Podman, including a control plane restart
in the middle of a run (crash safety: adopt, don't duplicate, don't lose)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from agent.app import run_agent
from agent.config import parse_args
from agent.connection import Backoff
from agent.runtime_fake import FakeRuntime
from controlplane.core.nodes import Liveness
from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import (
    free_port,
    until,
)

SETTINGS = Settings(heartbeat_interval=timedelta(seconds=1), liveness=Liveness())


class Fleet:
    """Agents running in this event loop, each with its own fake runtime."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.runtimes: dict[str, FakeRuntime] = {}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, pool: str) -> FakeRuntime:
        runtime = FakeRuntime(node_name=name)
        config = parse_args(
            [
                "--insecure",
                "--server",
                self.address,
                "--node-name",
                name,
                "--pool",
                pool,
                "--cpus",
                "4",
                "--memory",
                "8Gi",
            ]
        )
        self.runtimes[name] = runtime
        self.tasks.append(
            asyncio.create_task(
                run_agent(config, runtime=runtime, stop=self.stop, backoff=Backoff(maximum=0.3))
            )
        )
        return runtime

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[list[ControlPlane], Fleet, str]]:
    address = f"127.0.0.1:{free_port()}"
    planes = [await start(address, tmp_path / "cp.db", SETTINGS)]
    fleet = Fleet(address)
    try:
        yield planes, fleet, address
    finally:
        await fleet.close()
        await planes[-1].stop(grace=0.2)


async def get_run(address: str, run_id: int) -> rpb.Run:
    async with grpc.aio.insecure_channel(address) as ch:
        return (await rgrpc.RunServiceStub(ch).GetRun(rpb.GetRunRequest(run_id=run_id))).run


def container_of(run: rpb.Run, role: str, index: int = 0) -> str:
    """The container name the control plane reports for a replica."""
    want = rpb.REPLICA_ROLE_JOB if role == "job" else rpb.REPLICA_ROLE_WORKER
    return next(r.container_name for r in run.replicas if r.role == want and r.index == index)


async def setup_codespecs(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        await stub.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(
                    name="w", image="img", kind=cpb.CODESPEC_KIND_WORKER, endpoints={"http": 80}
                )
            )
        )
        await stub.CreateCodespec(
            cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
        )


async def create_run(address: str, workers: int = 3) -> int:
    run = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        worker=rpb.RunCodeTarget(
            codespec=rpb.CodespecRef(named="w"), node_pool="gpu", replicas=workers
        ),
    )
    async with grpc.aio.insecure_channel(address) as ch:
        reply = await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=run))
    return reply.run.id


async def test_distributed_run_over_real_grpc(cluster) -> None:
    _, fleet, address = cluster
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await setup_codespecs(address)
    run_id = await create_run(address)
    run = await get_run(address, run_id)
    job = container_of(run, "job")
    await until(lambda: job in cpu.containers, 10, "the job to be released")
    env = cpu.containers[job].spec.env
    assert env["TYGER_WORKER_NODES"] == (
        f'["run-{run_id}-worker-0","run-{run_id}-worker-1","run-{run_id}-worker-2"]'
    )
    assert env["TYGER_HTTP_WORKER_ENDPOINT_ADDRESSES"] == (
        f'["run-{run_id}-worker-0:80","run-{run_id}-worker-1:80","run-{run_id}-worker-2:80"]'
    )
    assert sorted(gpu.containers) == [container_of(run, "worker", i) for i in range(3)]
    # Names carry the cluster's short id; containers carry it whole as a label.
    cluster = cpu.containers[job].spec.cluster_id
    assert len(cluster) == 32 and job == f"muster-{cluster[:6]}-run-{run_id}-job-0"
    assert {c.spec.cluster_id for c in gpu.containers.values()} == {cluster}
    cpu.exit(job, 0)

    async def succeeded() -> bool:
        return (await get_run(address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 10, "Succeeded")
    await until(lambda: not gpu.containers and not cpu.containers, 10, "teardown")


async def test_control_plane_restart_mid_run_adopts_and_finishes(cluster, tmp_path) -> None:
    planes, fleet, address = cluster
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await setup_codespecs(address)
    run_id = await create_run(address, workers=2)
    job = container_of(await get_run(address, run_id), "job")
    await until(lambda: job in cpu.containers, 10, "the job to be released")
    creates_before = (cpu.create_count, gpu.create_count)

    await planes[0].stop(grace=0.2)  # the control plane goes away mid-run
    planes.append(await start(address, tmp_path / "cp.db", SETTINGS))

    async def running_again() -> bool:
        run = await get_run(address, run_id)
        return run.status == rpb.RUN_STATUS_RUNNING and run.running_count == 1

    await until(running_again, 15, "the run to be adopted as Running")
    cpu.exit(job, 0)

    async def succeeded() -> bool:
        return (await get_run(address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 15, "Succeeded after the restart")
    assert (cpu.create_count, gpu.create_count) == creates_before  # nothing started twice
    await until(lambda: not gpu.containers and not cpu.containers, 10, "teardown")


async def test_a_second_agent_with_the_same_node_name_is_refused(cluster) -> None:
    _, fleet, address = cluster
    first = fleet.add("twin", "cpu")
    await until(lambda: first.list_count > 0, 10, "the first agent to register")
    second = fleet.add("twin", "cpu")
    await setup_codespecs(address)
    async with grpc.aio.insecure_channel(address) as ch:
        for _ in range(3):
            reply = await rgrpc.RunServiceStub(ch).CreateRun(
                rpb.CreateRunRequest(
                    run=rpb.Run(
                        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu")
                    )
                )
            )
    job = container_of(reply.run, "job")
    await until(lambda: job in first.containers, 10, "the job on the first agent")
    assert second.containers == {}  # the impostor never got work
