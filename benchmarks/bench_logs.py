"""Benchmark: logs that survive any output, on real Podman, end to end.

Starts a control plane and one agent as processes on the local Podman (the
control plane with a 1 s heartbeat and NotReady after 3 s, as the e2e tests),
then, for each log reader of the agent (``--log-reader auto``: the containers'
log files; ``api``: Podman's log API), runs:

* a flood: one job prints ``--lines`` lines of ``--line-bytes`` bytes as fast
  as it can; meanwhile the node's status is polled every 0.2 s and a second,
  small run is started. Prints how fast lines were stored, when the last one
  was readable after the run ended, whether every line arrived (a flood past
  the 100 MiB log cap makes conmon start new log files), the second run's
  time, and peak RSS of agent and control plane;
* one line of ``--long-mb`` MB followed by a short line: time until both are
  readable, and the agent's peak RSS;
* ``--nonl-mb`` MB with no newline at all: the same figures.

    .venv/bin/python benchmarks/bench_logs.py [--lines 1000000] [--line-bytes 200]
        [--long-mb 50] [--nonl-mb 200] [--readers auto,api]

Needs scripts/setup.sh to have run. Everything it starts is stopped and
removed when it ends.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
import psutil

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc

BIN = Path(sys.executable).parent
PYTHON = "localhost/muster-python:latest"
BUSYBOX = "localhost/muster-busybox:latest"
NETWORK = "muster-bench-logs"
TERMINAL = {rpb.RUN_STATUS_SUCCEEDED, rpb.RUN_STATUS_FAILED, rpb.RUN_STATUS_CANCELED}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peak:
    """Samples a value every ``period`` seconds in a thread; keeps what it saw."""

    def __init__(self, sample: Callable[[], object], period: float = 0.1) -> None:
        self.values: list[object] = []
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.values.append(sample())
                except Exception:
                    pass
                self._stop.wait(period)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[object]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.values


def rss(pid: int) -> Callable[[], int]:
    process = psutil.Process(pid)
    return lambda: process.memory_info().rss


class Bench:
    def __init__(self, server: str, channel: grpc.Channel, cp_pid: int) -> None:
        self.server = server
        self.runs = rgrpc.RunServiceStub(channel)
        self.nodes = ngrpc.NodeServiceStub(channel)
        self.codespecs = cgrpc.CodespecServiceStub(channel)
        self.cp_pid = cp_pid
        self.made: set[str] = set()

    def codespec(self, name: str, image: str, command: list[str]) -> None:
        if name not in self.made:
            spec = cpb.Codespec(name=name, image=image, command=command)
            self.codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=spec))
            self.made.add(name)

    def create(self, codespec: str, pool: str) -> int:
        run = rpb.Run(
            job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named=codespec), node_pool=pool)
        )
        return self.runs.CreateRun(rpb.CreateRunRequest(run=run)).run.id

    def wait(self, run_id: int, timeout: float = 600) -> rpb.Run:
        deadline = time.monotonic() + timeout
        while True:
            run = self.runs.GetRun(rpb.GetRunRequest(run_id=run_id)).run
            if run.status in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not end")
            time.sleep(0.05)

    def last(self, run_id: int) -> rpb.LogLine | None:
        lines = [
            line
            for reply in self.runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id, tail=1))
            for line in reply.lines
        ]
        return lines[-1] if lines else None

    def wait_last(self, run_id: int, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while (line := self.last(run_id)) is None or line.text != text or line.partial:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id}'s last line never came")
            time.sleep(0.05)

    def lines(self, run_id: int) -> list[str]:
        """Every line of the run, parts joined."""
        out, begun = [], ""
        for reply in self.runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id)):
            for line in reply.lines:
                begun += line.text
                if not line.partial:
                    out.append(begun)
                    begun = ""
        return out


def flood(bench: Bench, pool: str, node: str, agent_pid: int, lines: int, size: int) -> None:
    pad = size - 10
    program = (
        f"import sys\nfor i in range({lines}): "
        f"sys.stdout.write(f'{{i:09d}} ' + 'f' * {pad} + '\\n')"
    )
    bench.codespec(f"flood-{lines}-{size}", PYTHON, ["python3", "-c", program])
    bench.codespec("small", BUSYBOX, ["sh", "-c", "echo small"])

    def status() -> int:
        listed = bench.nodes.ListNodes(npb.ListNodesRequest()).nodes
        return next(n.status for n in listed if n.name == node)

    statuses = Peak(status, 0.2)
    agent_rss, cp_rss = Peak(rss(agent_pid)), Peak(rss(bench.cp_pid))
    began = time.monotonic()
    run_id = bench.create(f"flood-{lines}-{size}", pool)
    while bench.last(run_id) is None:
        time.sleep(0.02)
    first = time.monotonic() - began
    small_began = time.monotonic()
    small = bench.wait(bench.create("small", pool), 120)
    small_took = time.monotonic() - small_began
    run = bench.wait(run_id)
    ended = time.monotonic()
    want = f"{lines - 1:09d} " + "f" * pad
    try:
        bench.wait_last(run_id, want, timeout=300)
        readable = f"{time.monotonic() - ended:.2f}s"
    except RuntimeError:
        readable = "never (the last line was lost)"
    stored_at = time.monotonic() - began
    seen = statuses.stop()
    agent_peak, cp_peak = max(agent_rss.stop()), max(cp_rss.stop())
    got = bench.lines(run_id)
    missing = lines - len(set(got))
    in_order = got == sorted(got)
    names = {1: "Ready", 2: "NotReady", 3: "Lost"}
    print(
        f"  flood {lines:,} lines x {size} B ({lines * size / 1e6:.0f} MB): "
        f"{rpb.RunStatus.Name(run.status)}; first line readable {first:.2f}s after create, "
        f"last {readable} after the run ended ({lines / stored_at:,.0f} lines/s from create)"
    )
    print(
        f"    lines missing {missing:,}, in order {in_order}; node "
        f"{sorted({names.get(s, str(s)) for s in seen})} over {len(seen)} looks; second run "
        f"{rpb.RunStatus.Name(small.status)} in {small_took:.2f}s; peak RSS agent "
        f"{agent_peak / 2**20:.0f} MiB, control plane {cp_peak / 2**20:.0f} MiB"
    )


def one_line(bench: Bench, pool: str, agent_pid: int, mb: int, newline: bool) -> None:
    count = mb * 1_000_000 // 8
    if newline:
        program = (
            "import sys\n"
            f"sys.stdout.write(''.join(f'{{i:08d}}' for i in range({count})) + '\\n')\n"
            "print('after')"
        )
        name, last = f"long-{mb}", "after"
    else:
        program = (
            f"import sys\nfor i in range({mb}): sys.stdout.write(chr(97 + i % 26) * 1_000_000)"
        )
        name, last = f"nonl-{mb}", chr(97 + (mb - 1) % 26) * 1_000_000
    bench.codespec(name, PYTHON, ["python3", "-c", program])
    agent_rss = Peak(rss(agent_pid))
    began = time.monotonic()
    run_id = bench.create(name, pool)
    run = bench.wait(run_id)
    ended = time.monotonic()
    if newline:
        bench.wait_last(run_id, last)
    else:  # the whole output is one line: wait for its last part
        while (line := bench.last(run_id)) is None or line.partial:
            time.sleep(0.05)
    readable = time.monotonic() - ended
    peak = max(agent_rss.stop())
    got = bench.lines(run_id)
    if newline:
        ok = got == ["".join(f"{i:08d}" for i in range(count)), "after"]
    else:
        ok = got == ["".join(chr(97 + i % 26) * 1_000_000 for i in range(mb))]
    what = f"one {mb} MB line + a short line" if newline else f"{mb} MB without a newline"
    print(
        f"  {what}: {rpb.RunStatus.Name(run.status)} after {ended - began:.2f}s, "
        f"readable {readable:.2f}s later, joined back {'whole' if ok else 'WRONG'}; "
        f"agent peak RSS {peak / 2**20:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--line-bytes", type=int, default=200)
    parser.add_argument("--long-mb", type=int, default=50)
    parser.add_argument("--nonl-mb", type=int, default=200)
    parser.add_argument("--readers", default="auto,api")
    args = parser.parse_args()
    server = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "MUSTER_CONFIG": "/nonexistent"}
    nodes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cp = subprocess.Popen(
            [
                str(BIN / "muster-controlplane"),
                "--insecure",
                "--listen",
                server,
                "--db",
                f"{tmp}/cp.db",
                "--heartbeat-interval",
                "1",
                "--node-not-ready-after",
                "3",
                "--node-lost-after",
                "30",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{tmp}/cp.log", "w"),
            env=env,
        )
        agent: subprocess.Popen[bytes] | None = None
        try:
            with grpc.insecure_channel(server) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                bench = Bench(server, channel, cp.pid)
                print(f"real Podman, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs")
                for reader in args.readers.split(","):
                    node = f"bench-logs-{reader}"
                    nodes.append(node)
                    agent = subprocess.Popen(
                        [
                            str(BIN / "muster-agent"),
                            "--insecure",
                            "--server",
                            server,
                            "--node-name",
                            node,
                            "--pool",
                            node,
                            "--network",
                            NETWORK,
                            "--log-reader",
                            reader,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(f"{tmp}/agent-{reader}.log", "w"),
                        env=env,
                    )
                    deadline = time.monotonic() + 30
                    while not any(
                        n.name == node and n.status == npb.NODE_STATUS_READY
                        for n in bench.nodes.ListNodes(npb.ListNodesRequest()).nodes
                    ):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"agent {node} did not become Ready")
                        time.sleep(0.1)
                    print(f"--log-reader {reader}:")
                    flood(bench, node, node, agent.pid, args.lines, args.line_bytes)
                    one_line(bench, node, agent.pid, args.long_mb, newline=True)
                    one_line(bench, node, agent.pid, args.nonl_mb, newline=False)
                    agent.terminate()
                    agent.wait(timeout=30)
                    agent = None
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(timeout=30)
            cp.terminate()
            cp.wait(timeout=30)
            for node in nodes:
                ids = subprocess.run(
                    ["podman", "ps", "-aq", "--filter", f"label=muster.node={node}"],
                    capture_output=True,
                    text=True,
                ).stdout.split()
                if ids:
                    subprocess.run(["podman", "rm", "-f", *ids], capture_output=True)
            subprocess.run(["podman", "network", "rm", "-f", NETWORK], capture_output=True)


if __name__ == "__main__":
    main()
