"""Benchmark: distributed runs on real Podman, end to end.

Starts a control plane and two agents (pools cpu and gpu) as processes on the
local Podman, then runs the hello-distributed example (3 workers + 1 job)
`--runs` times one after another and `--concurrent` at once, and prints where
the time goes: placement, workers ready (endpoints accept connections), job
released, run finished, containers removed.

    .venv/bin/python benchmarks/bench_podman_runs.py [--runs 5] [--concurrent 4]

Needs scripts/setup.sh to have run. Everything it starts is stopped and
removed when it ends.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc
from podman_cleanup import remove_podman_leftovers, stop_processes

from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLES = REPO / "examples" / "distributed"
NODES = ("bench-cpu", "bench-gpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def muster(server: str, *args: str) -> str:
    return subprocess.run(
        [str(BIN / "muster"), "--server", server, *args], check=True, capture_output=True, text=True
    ).stdout


def event_times(run: rpb.Run) -> dict[str, float]:
    """Seconds from creation to the first event of each kind."""
    start = run.created_at.ToDatetime()
    marks: dict[str, float] = {}
    for e in run.events:
        t = (e.time.ToDatetime() - start).total_seconds()
        kind = (
            "placed"
            if "scheduled on" in e.message
            else "ready"
            if e.message.endswith(" ready")
            else "released"
            if e.message == "job released"
            else "finished"
            if e.message.startswith("run ") and e.message != "run created"
            else None
        )
        if kind == "ready":
            marks["ready"] = t  # the last worker to become ready
        elif kind and kind not in marks:
            marks[kind] = t
    return marks


def one_run(server: str) -> dict[str, float]:
    started = time.monotonic()
    run_id = int(muster(server, "run", "create", "-f", str(EXAMPLES / "run.yaml")).strip())
    with grpc.insecure_channel(server) as ch:
        stub = rgrpc.RunServiceStub(ch)
        for reply in stub.WatchRun(rpb.WatchRunRequest(run_id=run_id)):
            run = reply.run
        if run.status != rpb.RUN_STATUS_SUCCEEDED:
            raise RuntimeError(f"run {run_id} {run.status_reason}")
        while any(
            r.state != rpb.CONTAINER_STATE_REMOVED
            for r in stub.GetRun(rpb.GetRunRequest(run_id=run_id)).run.replicas
        ):
            time.sleep(0.05)
    marks = event_times(run)
    marks["removed"] = time.monotonic() - started
    return marks


def report(title: str, samples: list[dict[str, float]]) -> None:
    print(title)
    for key in ("placed", "ready", "released", "finished", "removed"):
        values = [s[key] for s in samples if key in s]
        print(
            f"  create -> {key:<9} median {statistics.median(values):5.2f}s  "
            f"max {max(values):5.2f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=4)
    args = parser.parse_args()
    server = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            start_cluster(server, tmp, procs)
            muster(
                server, "codespec", "create", "hello-worker", "-f", str(EXAMPLES / "worker.yaml")
            )
            muster(server, "codespec", "create", "hello-job", "-f", str(EXAMPLES / "job.yaml"))
            print(
                f"real Podman, {datetime.now():%Y-%m-%d %H:%M}: hello-distributed "
                "(3 workers in pool gpu, job in pool cpu)"
            )
            report(
                f"{args.runs} runs one after another:", [one_run(server) for _ in range(args.runs)]
            )
            began = time.monotonic()
            with ThreadPoolExecutor(args.concurrent) as pool:
                batch = list(pool.map(lambda _: one_run(server), range(args.concurrent)))
            report(
                f"{args.concurrent} runs at once ({time.monotonic() - began:.2f}s in all):", batch
            )
        finally:
            clean_up(procs)


def start_cluster(server: str, tmp: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """A control plane on `server` and an agent in each of the pools cpu and gpu,
    added to `procs` as they start; returns when both agents are Ready."""
    procs.append(
        subprocess.Popen(
            [
                str(BIN / "muster-controlplane"),
                "--insecure",
                "--listen",
                server,
                "--db",
                f"{tmp}/cp.db",
                "--data-listen",
                "off",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    )
    assert procs[0].stdout is not None
    procs[0].stdout.readline()  # "listening on ..."
    for node, pool in zip(NODES, ("cpu", "gpu"), strict=True):
        procs.append(
            subprocess.Popen(
                [str(BIN / "muster-agent"), "--insecure", "--server", server, "--node-name", node,
                 "--pool", pool, "--network", "muster-bench"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while (
        sum(
            n["status"] == "Ready" for n in json.loads(muster(server, "node", "list", "-o", "json"))
        )
        < 2
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("agents did not become Ready")
        time.sleep(0.2)


def clean_up(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the processes, latest first; remove the agents' containers and network."""
    stop_processes(procs, timeout=20)
    remove_podman_leftovers([f"muster.node={node}" for node in NODES], ["muster-bench"])


if __name__ == "__main__":
    main()
