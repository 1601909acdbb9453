"""Benchmark: what the control plane costs per container, at a thousand nodes.

The control plane runs as its own process (`muster-controlplane`, on SQLite or,
with `--db postgresql`, on a PostgreSQL server of its own, fsync on);
the agents (the project's agent code over its in-memory fake runtime, over
real gRPC) run in other processes, so the control plane's CPU can be measured
alone. Runs of W workers + 1 job go through the whole path: create, place,
persist, start, ready, release, the job's exit, teardown, removed. A driver
keeps a window of runs in flight and counts them as they finish.

    .venv/bin/python benchmarks/bench_scale.py [--agents 1000] [--runs 5000] [--workers 3]
        [--agent-procs 2] [--in-flight 400] [--profile out.svg] [--db sqlite|postgresql|URL]

Prints containers/s, control-plane CPU-seconds per 1,000 containers (and
containers per CPU-second; PostgreSQL's own CPU apart), its peak RSS, and the
rate over the last fifth of the runs against the first fifth. `--profile`
records the control plane with py-spy (`.venv/bin/py-spy`) into a flame graph
(collapsed stacks if it ends in .txt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the agents' process ---------------------------------------------------------------


async def agents_main(server: str, first: int, count: int, status_file: Path) -> None:
    """Run `count` agents in this process until SIGTERM; finish every job that runs."""
    from agent.app import run_agent
    from agent.config import parse_args
    from agent.connection import Backoff
    from agent.runtime_fake import FakeRuntime
    from muster.common.gc_tuning import tune_gc

    tune_gc()  # as the agent's command does
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runtimes = [FakeRuntime(node_name=f"sim-{i}") for i in range(first, first + count)]
    tasks = []
    for runtime in runtimes:
        args = parse_args(
            ["--insecure", "--server", server, "--node-name", runtime.node_name,
             "--pool", "cpu", "--cpus", "64", "--memory", "256Gi"]
        )  # fmt: skip
        tasks.append(
            asyncio.create_task(
                run_agent(args, runtime=runtime, stop=stop, backoff=Backoff(maximum=1.0))
            )
        )
    while not stop.is_set():
        for runtime in runtimes:
            for name, container in list(runtime.containers.items()):
                if "-job-" in name and container.state == "running":
                    runtime.exit(name, 0)
        live = sum(len(r.containers) for r in runtimes)
        created = sum(r.create_count for r in runtimes)
        partial = status_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"live": live, "created": created}))
        partial.replace(status_file)  # whole or not at all, for the driver
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    for task in tasks:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


# -- the driver --------------------------------------------------------------------------


class Sampler:
    """Peak RSS of a process, sampled every 0.5 s."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0

    async def run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.5)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


async def measure(
    args: argparse.Namespace, address: str, pid: int, sampler: Sampler, agents: list[tuple]
) -> tuple:
    """Drive the runs while sampling the control plane's memory."""
    sampling = asyncio.create_task(sampler.run())
    try:
        return await drive(args, address, psutil.Process(pid), [stat for _, stat in agents])
    finally:
        sampling.cancel()


async def drive(args: argparse.Namespace, address: str, cp: psutil.Process, stats: list[Path]):
    """The codespecs; once every agent is Ready, the runs, until every container is
    removed: (seconds, control-plane CPU-seconds, when each run ended, when the
    first began, failures, containers created)."""
    from muster.v1 import node_pb2_grpc as ngrpc
    from muster.v1 import run_pb2_grpc as rgrpc

    async with grpc.aio.insecure_channel(address) as ch:
        runs, nodes = rgrpc.RunServiceStub(ch), ngrpc.NodeServiceStub(ch)
        await create_codespecs(ch)
        await wait_agents(nodes, args.agents)
        print(f"{args.agents} agents Ready; {args.runs} runs x ({args.workers} workers + 1 job)")

        request = run_request(args.workers)
        done_at: list[float] = []
        failures: list[str] = []
        cpu0, began = cpu_seconds(cp), time.perf_counter()
        replies = await run_all(runs, request, args, done_at, failures)
        print(f"  watch responses per run: {sum(replies) / max(1, len(replies)):.1f}")
        counts = await wait_removed(stats)  # the agents' runtimes are empty
        elapsed, cpu = time.perf_counter() - began, cpu_seconds(cp) - cpu0
        created = sum(c["created"] for c in counts)
    return elapsed, cpu, done_at, began, failures, created


async def create_codespecs(ch: grpc.aio.Channel) -> None:
    """The worker codespec `w` (one CPU, an endpoint) and the job codespec `j`."""
    from muster.v1 import codespec_pb2 as cpb
    from muster.v1 import codespec_pb2_grpc as cgrpc

    codespecs = cgrpc.CodespecServiceStub(ch)
    worker = cpb.Codespec(
        name="w", image="img", kind=cpb.CODESPEC_KIND_WORKER, endpoints={"http": 80},
        resources=cpb.Resources(requests=cpb.ResourceQuantities(cpu="1")),
    )  # fmt: skip
    await codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=worker))
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
    )


async def wait_agents(nodes, agents: int) -> None:
    """Until `agents` nodes are Ready (at most 120 s)."""
    from muster.v1 import node_pb2 as npb

    deadline = time.monotonic() + 120
    while True:
        listed = await nodes.ListNodes(npb.ListNodesRequest())
        ready = sum(1 for n in listed.nodes if n.status == npb.NODE_STATUS_READY)
        if ready >= agents:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready} of {agents} agents registered in 120 s")
        await asyncio.sleep(0.5)


def run_request(workers: int):
    """A run of `workers` workers and a job, all in pool cpu."""
    from muster.v1 import run_pb2 as rpb

    return rpb.CreateRunRequest(
        run=rpb.Run(
            job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
            worker=rpb.RunCodeTarget(
                codespec=rpb.CodespecRef(named="w"), node_pool="cpu", replicas=workers
            ),
            timeout_seconds=3600,
        )
    )


async def run_all(
    runs, request, args: argparse.Namespace, done_at: list[float], failures: list[str]
) -> list[int]:
    """--runs runs of `request`, at most --in-flight at once, each watched to its
    end: when each ended goes to `done_at`, why each that failed to `failures`.
    Returns how many watch responses each run took."""
    from muster.v1 import run_pb2 as rpb

    window = asyncio.Semaphore(args.in_flight)
    replies: list[int] = []

    async def one() -> None:
        async with window:
            created = (await runs.CreateRun(request)).run
            last = None
            watch = rpb.WatchRunRequest(run_id=created.id, changes_only=True)
            count = 0
            async for reply in runs.WatchRun(watch):  # reads only fields always sent
                last, count = reply.run, count + 1
            assert last is not None
            replies.append(count)
            if last.status != rpb.RUN_STATUS_SUCCEEDED:
                failures.append(f"run {last.id}: {last.status_reason}")
            done_at.append(time.perf_counter())

    await asyncio.gather(*(one() for _ in range(args.runs)))
    return replies


async def wait_removed(stats: list[Path]) -> list[dict]:
    """Until every container is removed (the agents' runtimes are empty, at most
    120 s): the agent processes' last counts."""
    deadline = time.monotonic() + 120
    while True:
        counts = [json.loads(p.read_text()) for p in stats if p.exists()]
        if counts and sum(c["live"] for c in counts) == 0:
            return counts
        if time.monotonic() > deadline:
            raise SystemExit(f"containers left after 120 s: {counts}")
        await asyncio.sleep(0.1)


def fifth_rates(done_at: list[float], began: float, containers_per_run: int) -> tuple[float, float]:
    """Containers/s over the first and the last fifth of the finished runs."""
    done = sorted(done_at)
    fifth = max(1, len(done) // 5)
    first = fifth * containers_per_run / (done[fifth - 1] - began)
    last = fifth * containers_per_run / (done[-1] - done[-fifth - 1])
    return first, last


def start_control_plane(
    tmp: Path, address: str, args: argparse.Namespace, db: str, metrics: str
) -> subprocess.Popen:
    """`muster-controlplane` on `db`, plaintext on loopback, its metrics on
    `metrics`; waits until it listens."""
    log = open(tmp / "controlplane.log", "w")
    # fmt: off
    proc = subprocess.Popen(
        [str(BIN / "muster-controlplane"), "--insecure", "--listen", address,
         "--db", db, "--max-pending-runs", "0", "--data-listen", "off",
         "--max-streams", str(args.in_flight + 100), "--heartbeat-interval", "5",
         "--log-level", "WARNING", "--metrics-listen", metrics],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    # fmt: on
    assert proc.stdout is not None
    proc.stdout.readline()  # "listening on ..."
    return proc


def start_agents(tmp: Path, address: str, args: argparse.Namespace) -> list[tuple]:
    """The agent processes, each with its status file."""
    per = -(-args.agents // args.agent_procs)
    started = []
    for k in range(args.agent_procs):
        count = min(per, args.agents - k * per)
        stat = tmp / f"agents-{k}.json"
        # fmt: off
        proc = subprocess.Popen(
            [sys.executable, __file__, "--agent-proc", "--server", address,
             "--first", str(k * per), "--count", str(count), "--status-file", str(stat)],
            stderr=open(tmp / f"agents-{k}.log", "w"),
        )
        # fmt: on
        started.append((proc, stat))
    return started


def start_profiler(pid: int, out: str) -> subprocess.Popen:
    """py-spy recording `pid` (collapsed stacks if `out` ends in .txt)."""
    raw = ["--format", "raw"] if out.endswith(".txt") else []
    command = [str(BIN / "py-spy"), "record", "-p", str(pid), "-o", out, "--rate", "50"]
    return subprocess.Popen(
        [*command, "--nonblocking", *raw], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def scrape(metrics: str) -> str:
    """The control plane's /metrics text."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
        return reply.read().decode()


def by_label(text: str, name: str, label: str) -> dict[str, int]:
    """Sums of the samples of metric `name` by the value of `label`."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            key = labels.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[key] = out.get(key, 0) + int(float(value))
    return out


def plain(text: str, name: str) -> int:
    """The value of the unlabelled metric `name` (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def print_per_container(text: str, containers: int) -> None:
    """Store calls and agent messages per container, from a /metrics scrape."""
    calls = by_label(text, "muster_store_call_duration_seconds_count", "method")

    def per(counts: dict[str, int], top: int = 6) -> str:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{key} {count / containers:.2f}" for key, count in ranked)

    print(f"  store calls per container: {per(calls)}")
    got = by_label(text, "muster_agent_messages_received_total", "kind")
    sent = by_label(text, "muster_agent_messages_sent_total", "kind")
    print(
        f"  agent messages per container: {sum(got.values()) / containers:.2f} received "
        f"({per(got)}), {sum(sent.values()) / containers:.2f} sent ({per(sent)}); "
        f"{plain(text, 'muster_agent_container_statuses_total') / containers:.2f} states "
        f"and {plain(text, 'muster_agent_container_starts_total') / containers:.2f} starts "
        "per container"
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_cpu(postmaster: int | None) -> float:
    """CPU-seconds of a PostgreSQL server and its backends so far (0 without one)."""
    if postmaster is None:
        return 0.0
    procs = [psutil.Process(postmaster)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def store_for(args: argparse.Namespace, tmp: Path):
    """(--db for the control plane, PID of a PostgreSQL server this benchmark
    started or None); `--db postgresql` starts one (tests/pg_support.py) and
    deletes it afterwards."""
    if args.db == "sqlite":
        yield str(tmp / "cp.db"), None
        return
    if args.db != "postgresql":
        yield args.db, None
        return
    sys.path.insert(0, str(REPO))
    from tests.pg_support import start_server

    server = start_server(durable=True)
    try:
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
        yield server.url(server.create_database()), pid
    finally:
        server.stop()


def bench(args: argparse.Namespace) -> None:
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp, store_for(args, Path(tmp)) as (db, postmaster):
        metrics = f"127.0.0.1:{free_port()}"
        cp_proc = start_control_plane(Path(tmp), address, args, db, metrics)
        agents: list[tuple] = []
        spy = None
        pg_before = server_cpu(postmaster)
        try:
            agents = start_agents(Path(tmp), address, args)
            if args.profile:
                spy = start_profiler(cp_proc.pid, args.profile)
            sampler = Sampler(cp_proc.pid)
            results = asyncio.run(measure(args, address, cp_proc.pid, sampler, agents))
            scraped = scrape(metrics)
            pg_cpu = server_cpu(postmaster) - pg_before  # while its backends are alive
        finally:
            if spy is not None:
                stop(spy, signal.SIGINT)
            for proc, _ in agents:
                stop(proc)
            stop(cp_proc)
    elapsed, cpu, done_at, began, failures, created = results
    per_run = args.workers + 1
    containers = args.runs * per_run
    first, last = fifth_rates(done_at, began, per_run)
    print(f"  store: {args.db}")
    print(f"  {args.runs - len(failures)}/{args.runs} succeeded; {created} containers created")
    for failure in failures[:5]:
        print(f"    {failure}")
    print(f"  {containers} containers in {elapsed:.1f} s: {containers / elapsed:.0f} containers/s")
    print(
        f"  control plane CPU: {cpu:.1f} s = {cpu / containers * 1000:.2f} CPU-s per 1,000 "
        f"containers ({containers / cpu:.0f} containers per CPU-second)"
    )
    if postmaster is not None:
        print(
            f"  PostgreSQL server CPU: {pg_cpu:.1f} s = {pg_cpu / containers * 1000:.2f} CPU-s "
            "per 1,000 containers"
        )
    print(f"  control plane peak RSS: {sampler.peak / 2**20:.0f} MiB")
    print(
        f"  rate: first fifth {first:.0f}/s, last fifth {last:.0f}/s "
        f"(last/first {last / first:.2f})"
    )
    print_per_container(scraped, containers)
    if args.profile:
        print(f"  profile: {args.profile}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--agent-procs", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=400)
    parser.add_argument("--profile", default="")
    parser.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (a file in a temporary directory), postgresql (a server of its own), "
        "or a --db URL for the control plane",
    )
    parser.add_argument("--agent-proc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server", default="", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--status-file", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_proc:
        sys.path.insert(0, str(REPO))
        asyncio.run(agents_main(args.server, args.first, args.count, Path(args.status_file)))
        return
    os.chdir(REPO)
    bench(args)


if __name__ == "__main__":
    main()
