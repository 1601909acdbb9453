"""Benchmark: the whole control loop at scale, simulated.

A real control plane (gRPC, SQLite) and N real agents over real gRPC, with the
agents' in-memory fake runtime instead of Podman, so hundreds of distributed
runs can go through placement, readiness, release, success and teardown.

    .venv/bin/python benchmarks/bench_cluster.py [--agents 20] [--runs 200] [--workers 3]

Prints throughput and the create-to-finish latency of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import grpc

from agent.app import run_agent
from agent.config import parse_args
from agent.connection import Backoff
from agent.runtime_fake import FakeRuntime
from controlplane.server import start
from controlplane.services.orchestrator import Settings
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def finish_jobs(runtimes: list[FakeRuntime], stop: asyncio.Event) -> None:
    """Play the jobs: every job container that runs exits 0 shortly after."""
    while not stop.is_set():
        for runtime in runtimes:
            for name, container in list(runtime.containers.items()):
                if "-job-" in name and container.state == "running":
                    runtime.exit(name, 0)
        await asyncio.sleep(0.05)


async def bench(agents: int, runs: int, workers: int) -> None:
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        plane = await start(
            address, Path(tmp) / "cp.db", Settings(heartbeat_interval=timedelta(seconds=1))
        )
        stop = asyncio.Event()
        runtimes = [FakeRuntime(node_name=f"sim-{i}") for i in range(agents)]
        tasks = [start_agent(address, i, runtimes[i], stop) for i in range(agents)]
        player = asyncio.create_task(finish_jobs(runtimes, stop))
        try:
            finished, elapsed = await run_all(address, runs, workers)
        finally:
            stop.set()
            player.cancel()
            for task in tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(task, 10)
            await plane.stop(grace=0.5)
    report(agents, runs, workers, finished, elapsed)


def start_agent(address: str, i: int, runtime: FakeRuntime, stop: asyncio.Event) -> asyncio.Task:
    """The i-th agent, in pool gpu if i is even, cpu if odd, until `stop`."""
    args = parse_args(
        ["--insecure", "--server", address, "--node-name", f"sim-{i}",
         "--pool", "cpu" if i % 2 else "gpu", "--cpus", "16", "--memory", "64Gi"]
    )  # fmt: skip
    return asyncio.create_task(
        run_agent(args, runtime=runtime, stop=stop, backoff=Backoff(maximum=0.5))
    )


async def run_all(address: str, runs: int, workers: int) -> tuple[list[rpb.Run], float]:
    """The codespecs, then `runs` runs created at once and watched to their end:
    how they ended, and the seconds from the first create to the last end."""
    async with grpc.aio.insecure_channel(address) as ch:
        codespecs, run_stub = cgrpc.CodespecServiceStub(ch), rgrpc.RunServiceStub(ch)
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(
                    name="w",
                    image="img",
                    kind=cpb.CODESPEC_KIND_WORKER,
                    endpoints={"http": 80},
                    resources=cpb.Resources(requests=cpb.ResourceQuantities(cpu="1")),
                )
            )
        )
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
        )
        began = time.perf_counter()
        created = await asyncio.gather(
            *(run_stub.CreateRun(run_request(workers)) for _ in range(runs))
        )
        ids = [c.run.id for c in created]
        finished = await asyncio.gather(*(watch_to_end(run_stub, i) for i in ids))
        elapsed = time.perf_counter() - began
    return finished, elapsed


def run_request(workers: int) -> rpb.CreateRunRequest:
    """A run of a job in pool cpu and `workers` workers in pool gpu."""
    return rpb.CreateRunRequest(
        run=rpb.Run(
            job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
            worker=rpb.RunCodeTarget(
                codespec=rpb.CodespecRef(named="w"), node_pool="gpu", replicas=workers
            ),
        )
    )


def report(agents: int, runs: int, workers: int, finished: list[rpb.Run], elapsed: float) -> None:
    ok = sum(1 for r in finished if r.status == rpb.RUN_STATUS_SUCCEEDED)
    latencies = sorted(
        (r.finished_at.ToDatetime() - r.created_at.ToDatetime()).total_seconds() for r in finished
    )
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    print(f"cluster simulation: {agents} agents, {runs} runs x ({workers} workers + 1 job)")
    print(
        f"  {ok}/{runs} succeeded in {elapsed:.1f}s: {runs / elapsed:.1f} runs/s, "
        f"{runs * (workers + 1) / elapsed:.0f} containers/s"
    )
    print(
        f"  create-to-finish latency: median {statistics.median(latencies):.2f}s, "
        f"p95 {p95:.2f}s, max {latencies[-1]:.2f}s"
    )


async def watch_to_end(stub: rgrpc.RunServiceStub, run_id: int) -> rpb.Run:
    last = None
    async for reply in stub.WatchRun(rpb.WatchRunRequest(run_id=run_id)):
        last = reply.run
    assert last is not None
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.agents, args.runs, args.workers))


if __name__ == "__main__":
    main()
