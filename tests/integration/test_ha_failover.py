"""Two control plane processes on one PostgreSQL database (docs/ha.md), with
fake-runtime agents in this process that know both addresses: one leader; a
follower answers reads and refuses writes naming the leader; SIGKILL of the
leader mid-run (a new leader within 10 s, the run succeeds, nothing started
twice, the CLI's watch carries on); SIGSTOP of the leader until the other took
over, then SIGCONT (the deposed leader makes no agent act, and exits)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    Fleet,
    container_of,
    create_run,
    get_run,
    setup_codespecs,
    until,
)
from tests.integration.test_node_maintenance import ready

pytestmark = pytest.mark.timeout(120)
BIN = Path(sys.executable).parent


@dataclass
class Plane:
    """One muster-controlplane process."""

    address: str
    process: subprocess.Popen[bytes]
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)


def start_plane(url: str, tmp: Path, name: str) -> Plane:
    address = f"127.0.0.1:{free_port()}"
    output = tmp / f"{name}.log"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "muster-controlplane"),
                "--insecure",
                "--listen",
                address,
                "--db",
                url,
                "--state-dir",
                str(tmp / name),
                "--data-listen",
                "off",
                "--heartbeat-interval",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Plane(address, process, output)


@pytest.fixture
def planes(postgres_url: str, tmp_path: Path) -> Iterator[list[Plane]]:
    started: list[Plane] = []
    try:
        started.append(start_plane(postgres_url, tmp_path, "cp-a"))
        time.sleep(0.5)  # the first one leads, so the test knows which (not required)
        started.append(start_plane(postgres_url, tmp_path, "cp-b"))
        yield started
    finally:
        for plane in started:
            plane.stop()


async def leads(address: str) -> bool:
    """Whether the control plane at `address` serves as the leader."""
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="muster-leader"), timeout=1
            )
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def listening(address: str) -> bool:
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return True


async def the_leader(planes: list[Plane], seconds: float = 15) -> Plane:
    for plane in planes:
        await until(lambda p=plane: listening(p.address), seconds, f"{plane.address} to listen")
    found: list[Plane] = []

    async def one() -> bool:
        found[:] = [p for p in planes if p.process.poll() is None and await leads(p.address)]
        return len(found) == 1

    await until(one, seconds, "exactly one leader")
    return found[0]


@pytest.fixture
async def fleet(planes: list[Plane]) -> AsyncIterator[Fleet]:
    agents = Fleet(",".join(p.address for p in planes))
    try:
        yield agents
    finally:
        await agents.close()


async def test_one_leader_a_follower_reads_and_names_the_leader(planes, fleet) -> None:
    leader = await the_leader(planes)
    follower = next(p for p in planes if p is not leader)
    fleet.add("n-cpu", "cpu")
    fleet.add("n-gpu", "gpu")
    await until(lambda: ready(leader.address, "n-cpu", "n-gpu"), 15, "both agents registered")
    await setup_codespecs(leader.address)
    run_id = await create_run(leader.address, workers=1)
    async with grpc.aio.insecure_channel(follower.address) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="x", image="img"))
            )
        listed = await stub.ListCodespecs(cpb.ListCodespecsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"is at {leader.address}" in (refused.value.details() or "")
    assert ("muster-leader-api", leader.address) in tuple(refused.value.trailing_metadata())
    assert sorted(c.name for c in listed.codespecs) == ["j", "w"]  # reads from the database
    for plane in planes:  # a run reads the same on both
        assert (await get_run(plane.address, run_id)).id == run_id
    # The CLI sent to the follower goes to the leader by itself.
    servers = f"{follower.address},{leader.address}"
    cli = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "muster"), "--server", servers, "codespec", "create", "y", "--image", "img"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": str(Path(leader.output).parent), "MUSTER_CONFIG": ""},
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == "1"


def watch(servers: str, run_id: int, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "muster"), "--server", servers, "run", "watch", str(run_id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(home), "MUSTER_CONFIG": ""},
    )


async def test_sigkill_of_the_leader_mid_run(planes, fleet, tmp_path: Path) -> None:
    leader = await the_leader(planes)
    other = next(p for p in planes if p is not leader)
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await until(lambda: ready(leader.address, "n-cpu", "n-gpu"), 15, "both agents registered")
    await setup_codespecs(leader.address)
    run_id = await create_run(leader.address, workers=2)
    job = container_of(await get_run(leader.address, run_id), "job")
    await until(lambda: job in cpu.containers, 15, "the job to be released")
    creates = (cpu.create_count, gpu.create_count)
    watcher = watch(f"{leader.address},{other.address}", run_id, tmp_path)
    try:
        await asyncio.sleep(1)  # the watch is following the leader
        killed = time.monotonic()
        leader.process.kill()
        await until(lambda: leads(other.address), 10, "a new leader within 10 s")
        took = time.monotonic() - killed
        print(f"\nnew leader {other.address} {took:.1f} s after SIGKILL of the leader")

        async def running_again() -> bool:
            run = await get_run(other.address, run_id)
            return run.status == rpb.RUN_STATUS_RUNNING and run.running_count == 1

        await until(running_again, 15, "the new leader to adopt the run as Running")
        cpu.exit(job, 0)

        async def succeeded() -> bool:
            return (await get_run(other.address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

        await until(succeeded, 15, "Succeeded under the new leader")
        assert (cpu.create_count, gpu.create_count) == creates  # nothing started twice
        await until(lambda: not cpu.containers and not gpu.containers, 15, "teardown")
        out, err = await asyncio.to_thread(watcher.communicate, timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    assert "Succeeded" in out


async def test_a_paused_leader_cannot_make_agents_act(planes, fleet) -> None:
    leader = await the_leader(planes)
    other = next(p for p in planes if p is not leader)
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await until(lambda: ready(leader.address, "n-cpu", "n-gpu"), 15, "both agents registered")
    await setup_codespecs(leader.address)
    run_id = await create_run(leader.address, workers=1)
    job = container_of(await get_run(leader.address, run_id), "job")
    await until(lambda: job in cpu.containers, 15, "the job to be released")

    leader.process.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    await until(lambda: leads(other.address), 15, "the other to take over")
    print(f"\ntook over {time.monotonic() - paused:.1f} s after SIGSTOP of the leader")
    before = (cpu.create_count, gpu.create_count, cpu.remove_calls, gpu.remove_calls)
    names = (set(cpu.containers), set(gpu.containers))
    leader.process.send_signal(signal.SIGCONT)
    await until(lambda: leader.process.poll() is not None, 15, "the deposed leader to exit")
    assert leader.process.returncode == 3
    assert "lost the leadership" in leader.text()
    after = (cpu.create_count, gpu.create_count, cpu.remove_calls, gpu.remove_calls)
    assert after == before  # it started and stopped nothing
    assert (set(cpu.containers), set(gpu.containers)) == names

    async def running() -> bool:
        run = await get_run(other.address, run_id)
        return run.status == rpb.RUN_STATUS_RUNNING and run.running_count == 1

    await until(running, 30, "the run to carry on under the new leader")
    cpu.exit(job, 0)

    async def succeeded() -> bool:
        return (await get_run(other.address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 30, "Succeeded under the new leader")
    assert (cpu.create_count, gpu.create_count) == before[:2]
