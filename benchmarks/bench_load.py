"""Benchmark: a control plane process under load from many concurrent clients.

Starts a secure `muster-controlplane` process (TLS, bearer token; loopback
only), a process of fake-runtime agents that join with join tokens and play
the runs placed on them (every job writes a few log lines and exits 0, so runs
go Pending -> Running -> Succeeded and have logs), then client processes, each
with its share of the asyncio clients (one TLS connection each), that call for
`--seconds` (60) a mix of

    CreateRun 15% (a job, or a job and 2 workers), GetRun 35%, ListRuns 20%,
    WatchRun 15% (until the first answer), GetRunLogs 15% (all lines)

on runs that exist (made before the start, and by the clients themselves).
Prints, per method, calls, p50, p99 and max latency, and every distinct error
with its count; the runs by status at the end (and why runs failed); the CPU
each part used; whether the agents' nodes stayed Ready (polled every second:
a busy API must not starve their heartbeats). Exits 1 if there was any error
or a node was not Ready at some point.

    .venv/bin/python benchmarks/bench_load.py [--seconds 60] [--clients 200]
        [--processes 2] [--agents 4]

Every process it starts is stopped, and its files removed, when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import start_process

MIX = {"CreateRun": 15, "GetRun": 35, "ListRuns": 20, "WatchRun": 15, "GetRunLogs": 15}
POOL = "load"
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Access:
    """How a client reaches the control plane as the admin."""

    address: str
    ca: str
    token: str

    @classmethod
    def load(cls, address: str, config: Path) -> Access:
        data = json.loads(config.read_text())
        return cls(address, data["caCert"], data["token"])

    def channel(self) -> grpc.aio.Channel:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(self.ca.encode()),
            grpc.access_token_call_credentials(self.token),
        )
        return grpc.aio.secure_channel(self.address, creds)


def run_message(rng: random.Random) -> rpb.Run:
    run = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="load-job"), node_pool=POOL),
        tags={"bench": "load"},
    )
    if rng.random() < 0.3:
        run.worker.CopyFrom(
            rpb.RunCodeTarget(
                codespec=rpb.CodespecRef(named="load-worker"), node_pool=POOL, replicas=2
            )
        )
    return run


# -- clients (one process runs --clients of them) --------------------------------------------


async def client(
    access: Access,
    seed: int,
    until: float,
    ids: list[int],
    latencies: dict[str, list[float]],
    errors: Counter[str],
) -> None:
    rng = random.Random(seed)
    methods, weights = list(MIX), list(MIX.values())
    async with access.channel() as channel:
        stub = rgrpc.RunServiceStub(channel)
        while time.monotonic() < until:
            method = rng.choices(methods, weights)[0]
            run_id = rng.choice(ids)
            began = time.perf_counter()
            try:
                if method == "CreateRun":
                    created = await stub.CreateRun(
                        rpb.CreateRunRequest(run=run_message(rng)), timeout=CALL_TIMEOUT
                    )
                    ids.append(created.run.id)
                elif method == "GetRun":
                    await stub.GetRun(rpb.GetRunRequest(run_id=run_id), timeout=CALL_TIMEOUT)
                elif method == "ListRuns":
                    await stub.ListRuns(rpb.ListRunsRequest(page_size=50), timeout=CALL_TIMEOUT)
                elif method == "WatchRun":
                    call = stub.WatchRun(rpb.WatchRunRequest(run_id=run_id), timeout=CALL_TIMEOUT)
                    first = await call.read()
                    call.cancel()
                    if first is grpc.aio.EOF:
                        raise RuntimeError("WatchRun ended without an answer")
                else:
                    async for _ in stub.GetRunLogs(
                        rpb.GetRunLogsRequest(run_id=run_id), timeout=CALL_TIMEOUT
                    ):
                        pass
            except grpc.aio.AioRpcError as exc:
                errors[f"{method}: {exc.code().name}: {exc.details()}"] += 1
                continue
            except Exception as exc:
                errors[f"{method}: {type(exc).__name__}: {exc}"] += 1
                continue
            latencies[method].append(time.perf_counter() - began)


async def clients_main(args: argparse.Namespace, ca: str) -> None:
    access = Access(args.address, ca, os.environ["MUSTER_TOKEN"])
    ids = [int(i) for i in args.ids.split(",")]
    latencies: dict[str, list[float]] = {m: [] for m in MIX}
    errors: Counter[str] = Counter()
    until = time.monotonic() + args.seconds
    await asyncio.gather(
        *(
            client(access, args.seed * 10_000 + i, until, ids, latencies, errors)
            for i in range(args.clients)
        )
    )
    cpu = psutil.Process().cpu_times()
    json.dump({"latencies": latencies, "errors": errors, "cpu": cpu.user + cpu.system}, sys.stdout)


# -- fake agents (one process runs all of them) ----------------------------------------------


async def agents_main(args: argparse.Namespace) -> None:
    from agent.app import run_agent
    from agent.config import parse_args
    from agent.connection import Backoff
    from agent.runtime_fake import FakeRuntime

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tokens = args.tokens.split(",")
    runtimes = [FakeRuntime(node_name=f"load-{i}") for i in range(len(tokens))]
    tasks = [
        asyncio.create_task(
            run_agent(
                parse_args(agent_argv(args, i, token)),
                runtime=runtimes[i],
                stop=stop,
                backoff=Backoff(maximum=1.0),
            )
        )
        for i, token in enumerate(tokens)
    ]
    player = asyncio.create_task(play(runtimes, stop))
    await stop.wait()
    player.cancel()
    for task in tasks:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def agent_argv(args: argparse.Namespace, i: int, token: str) -> list[str]:
    """The command line of the i-th fake agent, joining with `token`."""
    return [
        "--server", args.address, "--ca-cert", args.ca_file, "--join-token", token,
        "--state-dir", str(Path(args.state) / f"load-{i}"), "--node-name", f"load-{i}",
        "--pool", POOL, "--cpus", "1000", "--memory", "4096Gi",
    ]  # fmt: skip


async def play(runtimes: list, stop: asyncio.Event) -> None:
    """Every job that runs writes three lines and exits 0 a moment later."""
    seen: set[str] = set()
    while not stop.is_set():
        for runtime in runtimes:
            for name, container in list(runtime.containers.items()):
                if "-job-" in name and container.state == "running" and name not in seen:
                    seen.add(name)
                    for n in range(3):
                        runtime.write_log(name, "stdout", f"line {n} of {name}\n")
                    runtime.exit(name, 0)
        await asyncio.sleep(0.2)


# -- the benchmark ---------------------------------------------------------------------------


def cpu_seconds(proc: subprocess.Popen[str]) -> float:
    """CPU time (user + system) a process has used so far."""
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def prepare(access: Access, agents: int) -> list[str]:
    """Join tokens for the fake agents, and the codespecs."""
    async with access.channel() as channel:
        nodes = ngrpc.NodeServiceStub(channel)
        tokens = [
            (await nodes.CreateJoinToken(npb.CreateJoinTokenRequest(pools=[POOL]))).join_token
            for _ in range(agents)
        ]
        codespecs = cgrpc.CodespecServiceStub(channel)
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(name="load-job", image="localhost/load:1", command=["true"])
            )
        )
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(
                    name="load-worker",
                    kind=cpb.CODESPEC_KIND_WORKER,
                    image="localhost/load:1",
                    endpoints={"http": 8080},
                )
            )
        )
    return tokens


async def seed_runs(access: Access, count: int) -> list[int]:
    rng = random.Random(0)
    async with access.channel() as channel:
        stub = rgrpc.RunServiceStub(channel)
        return [
            (await stub.CreateRun(rpb.CreateRunRequest(run=run_message(rng)))).run.id
            for _ in range(count)
        ]


async def wait_nodes(access: Access, count: int) -> None:
    deadline = time.monotonic() + 60
    async with access.channel() as channel:
        stub = ngrpc.NodeServiceStub(channel)
        while True:
            nodes = (await stub.ListNodes(npb.ListNodesRequest(pool=POOL))).nodes
            if sum(1 for n in nodes if n.status == npb.NODE_STATUS_READY) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {count} fake agents registered")
            await asyncio.sleep(0.2)


class NodeMonitor(threading.Thread):
    """Polls ListNodes every second and records every node that is not Ready:
    agents' heartbeats must get through however busy the API is."""

    def __init__(self, access: Access) -> None:
        super().__init__(daemon=True)
        self.access = access
        self.changes: list[str] = []
        self._halt = threading.Event()
        self._began = time.monotonic()

    def run(self) -> None:
        asyncio.run(self._poll())

    async def _poll(self) -> None:
        last: dict[str, int] = {}
        async with self.access.channel() as channel:
            stub = ngrpc.NodeServiceStub(channel)
            while not self._halt.is_set():
                try:
                    nodes = (await stub.ListNodes(npb.ListNodesRequest(), timeout=10)).nodes
                except grpc.aio.AioRpcError as exc:
                    self.changes.append(f"ListNodes failed: {exc.code().name}")
                    nodes = []
                for n in nodes:
                    if last.get(n.name, npb.NODE_STATUS_READY) != n.status:
                        status = npb.NodeStatus.Name(n.status).removeprefix("NODE_STATUS_")
                        at = time.monotonic() - self._began
                        self.changes.append(f"{n.name} {status} at {at:.0f} s")
                    last[n.name] = n.status
                await asyncio.sleep(1)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)


async def count_runs(access: Access) -> str:
    """Runs by status, and why runs failed (from the latest 1000 failed)."""
    async with access.channel() as channel:
        stub = rgrpc.RunServiceStub(channel)
        answer = await stub.CountRuns(rpb.CountRunsRequest())
        failed = await stub.ListRuns(
            rpb.ListRunsRequest(statuses=[rpb.RUN_STATUS_FAILED], page_size=1000)
        )
    names = {v: k.removeprefix("RUN_STATUS_").title() for k, v in rpb.RunStatus.items()}
    text = ", ".join(f"{names[c.status]} {c.count}" for c in answer.counts)
    reasons = Counter(r.status_reason.split(" (")[0] for r in failed.runs)
    if reasons:
        text += "; failed: " + ", ".join(f"{n} x '{why}'" for why, n in reasons.most_common(5))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--role", choices=["main", "clients", "agents"], default="main")
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clients":
        asyncio.run(clients_main(args, Path(args.ca_file).read_text()))
        return 0
    if args.role == "agents":
        asyncio.run(agents_main(args))
        return 0
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    me = [sys.executable, str(Path(__file__).resolve())]
    started: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="muster-bench-load-") as tmp:
        cp = start_process(Path(tmp) / "cp.db")
        started.append(cp.proc)
        try:
            assert cp.config is not None
            access = Access.load(cp.address, cp.config)
            ca_file = Path(tmp) / "ca.crt"
            ca_file.write_text(access.ca)
            tokens = asyncio.run(prepare(access, args.agents))
            agents = start_agents(me, cp.address, ca_file, tokens, tmp)
            started.append(agents)
            asyncio.run(wait_nodes(access, args.agents))
            ids = asyncio.run(seed_runs(access, 50))
            cpu_before = {"control plane": cpu_seconds(cp.proc), "agents": cpu_seconds(agents)}
            monitor = NodeMonitor(access)
            monitor.start()
            began = time.monotonic()
            workers = start_clients(me, args, cp.address, ca_file, ids, access.token)
            started += workers
            results = []
            for worker in workers:
                out, _ = worker.communicate(timeout=args.seconds + CALL_TIMEOUT + 60)
                results.append(json.loads(out))
            wall = time.monotonic() - began
            cpu = {
                k: (cpu_seconds(p) - cpu_before[k]) / wall
                for k, p in [("control plane", cp.proc), ("agents", agents)]
            }
            monitor.stop()
            counts = asyncio.run(count_runs(access))
        finally:
            stop_all(started)
    return report(args, results, wall, cpu, counts, monitor.changes)


def start_agents(
    me: list[str], address: str, ca_file: Path, tokens: list[str], tmp: str
) -> subprocess.Popen[str]:
    """The process of the fake agents, one per join token; its log in `tmp`."""
    agent_log = open(Path(tmp) / "agents.log", "w")
    agents = subprocess.Popen(
        [*me, "--role", "agents", "--address", address, "--ca-file", str(ca_file),
         "--tokens", ",".join(tokens), "--state", tmp],
        stdout=subprocess.DEVNULL, stderr=agent_log, text=True,
    )  # fmt: skip
    agent_log.close()
    return agents


def start_clients(
    me: list[str], args: argparse.Namespace, address: str, ca_file: Path, ids: list[int], token: str
) -> list[subprocess.Popen[str]]:
    """The client processes, --clients shared among --processes of them."""
    per = [args.clients // args.processes] * args.processes
    per[0] += args.clients - sum(per)
    env = {**os.environ, "MUSTER_TOKEN": token}
    clients = []
    for i, n in enumerate(per):
        argv = [*me, "--role", "clients", "--address", address, "--ca-file", str(ca_file),
                "--ids", ",".join(map(str, ids)), "--clients", str(n),
                "--seconds", str(args.seconds), "--seed", str(i + 1)]  # fmt: skip
        clients.append(subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True))
    return clients


def stop_all(started: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every process started, the latest first; SIGKILL if it does not end."""
    for proc in reversed(started):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def report(
    args: argparse.Namespace,
    results: list[dict],
    wall: float,
    cpu: dict[str, float],
    counts: str,
    changes: list[str],
) -> int:
    """Print the figures; 1 if there was any error or a node was not Ready."""
    latencies: dict[str, list[float]] = {m: [] for m in MIX}
    errors: Counter[str] = Counter()
    for result in results:
        for method, values in result["latencies"].items():
            latencies[method] += values
        errors.update(result["errors"])
    total = sum(len(v) for v in latencies.values())
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {platform.node()} "
        f"({platform.processor() or platform.machine()}): {args.clients} clients in "
        f"{args.processes} processes for {args.seconds:.0f} s against one control plane "
        f"process (TLS + token, SQLite), {args.agents} fake-runtime agents"
    )
    print(f"{total} calls in {wall:.1f} s ({total / wall:.0f}/s), {sum(errors.values())} errors")
    print(f"runs at the end: {counts}")
    print(
        "fake agents' nodes: "
        + ("Ready throughout (checked every second)" if not changes else "; ".join(changes))
    )
    print(
        "CPU (cores busy on average): "
        + ", ".join(f"{name} {share:.2f}" for name, share in cpu.items())
        + f", clients {sum(r['cpu'] for r in results) / wall:.2f}"
    )
    print(f"{'method':<11} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for method, values in latencies.items():
        if values:
            print(
                f"{method:<11} {len(values):>7} {percentile(values, 0.5) * 1000:>8.1f} "
                f"{percentile(values, 0.99) * 1000:>8.1f} {max(values) * 1000:>8.1f}"
            )
    for error, count in errors.most_common():
        print(f"  error x{count}: {error}")
    return 1 if errors or changes else 0


if __name__ == "__main__":
    sys.exit(main())
