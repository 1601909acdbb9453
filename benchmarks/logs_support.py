"""What benchmarks/bench_logs.py stands on: the control plane and agent
processes it starts (and stops and cleans up after), a client of the control
plane's API, and sampling in a thread.

Imported by bench_logs.py from this directory (run as
``.venv/bin/python benchmarks/bench_logs.py``); not a benchmark itself.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
from podman_cleanup import remove_podman_leftovers, stop_processes

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc

BIN = Path(sys.executable).parent
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


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values, sorted or not."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


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

    def node_status(self, node: str) -> int:
        listed = self.nodes.ListNodes(npb.ListNodesRequest()).nodes
        return next(n.status for n in listed if n.name == node)

    def wait_ready(self, node: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(
            n.name == node and n.status == npb.NODE_STATUS_READY
            for n in self.nodes.ListNodes(npb.ListNodesRequest()).nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {node} did not become Ready")
            time.sleep(0.1)


# -- the processes ---------------------------------------------------------------------------


def start_control_plane(tmp: str, server: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The control plane, plaintext on `server`, with a 1 s heartbeat and NotReady
    after 3 s (as the e2e tests), its state and log in `tmp`."""
    return subprocess.Popen(
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
            "--state-dir",
            f"{tmp}/cp-state",
            "--data-listen",
            "off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(f"{tmp}/cp.log", "w"),
        env=env,
    )


def start_agent(
    tmp: str, server: str, env: dict[str, str], node: str, reader: str
) -> subprocess.Popen[bytes]:
    """An agent named `node` in the pool `node`, with `--log-reader reader`."""
    return subprocess.Popen(
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
            "--state-dir",
            f"{tmp}/agent-{reader}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(f"{tmp}/agent-{reader}.log", "w"),
        env=env,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process this bench started; kill it if it does not end."""
    stop_processes([process])


def print_log_tails(tmp: str) -> None:
    """The last lines of every process's log, to stderr."""
    for log in sorted(Path(tmp).glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}, last lines:", *tail, sep="\n", file=sys.stderr)


def remove_containers(nodes: list[str]) -> None:
    """Every container the agents of `nodes` left, and the bench's network."""
    remove_podman_leftovers([f"muster.node={node}" for node in nodes], [NETWORK])
