"""Benchmark: muster's release path against raw Podman doing the same work.

For N workers, both sides do exactly this on the local Podman: start N
workers (a Python TCP server answering one line) in parallel, wait until
every worker's port accepts connections, then start a job that connects to
each worker, reads its answer and exits 0. Timed from the command's start to
the job's exit:

- muster: `muster run exec` (a control plane and one agent, both processes,
  already running) with the worker and job codespecs;
- raw: what a careful hand-written script does with the `podman` CLI: a
  network, `podman run -d` for every worker at once, a TCP probe of each
  worker's address from the host, `podman run` of the job (removal untimed).

The two alternate (A, B, A, B, ...) so both see the same machine, and each
N = 1, 8, 16 prints both medians and their ratio.

    .venv/bin/python benchmarks/bench_release.py [--rounds 5] [--workers 1,8,16]

Needs scripts/setup.sh to have run (Podman, localhost/muster-python:latest).
Everything it starts is stopped and removed when it ends.
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

from podman_cleanup import remove_podman_leftovers, stop_processes

BIN = Path(sys.executable).parent
IMAGE = "localhost/muster-python:latest"
NODE = "bench-release"
MUSTER_NET = "muster-bench-release"
RAW_NET = "raw-bench-release"
RAW_LABEL = "bench=raw-release"

WORKER = """
import socket, socketserver
class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((socket.gethostname() + "\\n").encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Answer).serve_forever()
"""

JOB = """
import json, os, socket
for address in {addresses}:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        assert conn.makefile().readline().strip()
"""
MUSTER_JOB = JOB.format(addresses='json.loads(os.environ["TYGER_ECHO_WORKER_ENDPOINT_ADDRESSES"])')
RAW_JOB = JOB.format(addresses='os.environ["ADDRESSES"].split(",")')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def muster(server: str, *args: str) -> str:
    return run(str(BIN / "muster"), "--server", server, *args)


# -- muster ------------------------------------------------------------------------------


def write_specs(tmp: Path) -> tuple[Path, Path]:
    worker, job = tmp / "worker.json", tmp / "job.json"
    worker.write_text(json.dumps({
        "kind": "worker", "image": IMAGE, "endpoints": {"echo": 7000},
        "command": ["python3", "-u", "-c", WORKER],
    }))  # fmt: skip
    job.write_text(json.dumps({"kind": "job", "image": IMAGE,
                               "command": ["python3", "-c", MUSTER_JOB]}))  # fmt: skip
    return worker, job


def muster_once(server: str, workers: int) -> float:
    began = time.perf_counter()
    run(str(BIN / "muster"), "--server", server, "run", "exec", "-c", "rel-job",
        "--worker-codespec", "rel-worker", "--worker-replicas", str(workers))  # fmt: skip
    return time.perf_counter() - began


# -- raw Podman ---------------------------------------------------------------------------


def accepts(address: str) -> bool:
    try:
        with socket.create_connection((address, 7000), timeout=0.2):
            return True
    except OSError:
        return False


def raw_once(workers: int, round_no: int) -> float:
    names = [f"raw-r{round_no}-w{i}" for i in range(workers)]
    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(lambda n: run(
                "podman", "run", "-d", "--name", n, "--network", RAW_NET, "--label", RAW_LABEL,
                IMAGE, "python3", "-u", "-c", WORKER), names))  # fmt: skip
        inspected = json.loads(run("podman", "inspect", *names))
        ips = [c["NetworkSettings"]["Networks"][RAW_NET]["IPAddress"] for c in inspected]
        deadline = time.monotonic() + 60
        for ip in ips:
            while not accepts(ip):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"raw worker at {ip} never accepted")
                time.sleep(0.02)
        # Hosts entries for the workers, as muster gives its jobs (the network's
        # DNS sometimes answered a fresh name too late: the job then failed).
        hosts = [f"--add-host={n}:{ip}" for n, ip in zip(names, ips, strict=True)]
        run("podman", "run", "--rm", "--network", RAW_NET, "--label", RAW_LABEL, *hosts,
            "-e", "ADDRESSES=" + ",".join(f"{n}:7000" for n in names),
            IMAGE, "python3", "-c", RAW_JOB)  # fmt: skip
        return time.perf_counter() - began
    finally:
        run("podman", "rm", "-f", "-t", "0", *names, check=False)


# -- the comparison -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1,8,16")
    args = parser.parse_args()
    sizes = [int(n) for n in args.workers.split(",")]
    server = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            start_muster(server, tmp, procs)
            worker, job = write_specs(Path(tmp))
            muster(server, "codespec", "create", "rel-worker", "-f", str(worker))
            muster(server, "codespec", "create", "rel-job", "-f", str(job))
            run("podman", "network", "create", RAW_NET, check=False)
            muster_once(server, 1), raw_once(1, -1)  # warm up both (images, networks)
            print(f"real Podman, {datetime.now():%Y-%m-%d %H:%M}, {args.rounds} rounds, "
                  "interleaved; from the command's start to the job's exit")  # fmt: skip
            for n in sizes:
                ours, theirs = [], []
                for r in range(args.rounds):
                    ours.append(muster_once(server, n))
                    theirs.append(raw_once(n, r))
                a, b = statistics.median(ours), statistics.median(theirs)
                print(f"  N={n:>2}: muster {a:5.2f} s   raw Podman {b:5.2f} s   "
                      f"ratio {a / b:4.2f}")  # fmt: skip
        finally:
            clean_up(procs)


def start_muster(server: str, tmp: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """A control plane on `server` and one agent, added to `procs` as they start;
    returns when the agent is Ready."""
    procs.append(subprocess.Popen(
        [str(BIN / "muster-controlplane"), "--insecure", "--listen", server,
         "--db", f"{tmp}/cp.db", "--data-listen", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ))  # fmt: skip
    assert procs[0].stdout is not None
    procs[0].stdout.readline()  # "listening on ..."
    procs.append(subprocess.Popen(
        [str(BIN / "muster-agent"), "--insecure", "--server", server, "--node-name", NODE,
         "--network", MUSTER_NET],
        stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/agent.log", "w"),
    ))  # fmt: skip
    deadline = time.monotonic() + 30
    while not any(
        n["status"] == "Ready" for n in json.loads(muster(server, "node", "list", "-o", "json"))
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not become Ready")
        time.sleep(0.2)


def clean_up(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the processes, latest first; remove both sides' containers and networks."""
    stop_processes(procs)
    remove_podman_leftovers([f"muster.node={NODE}", RAW_LABEL], [MUSTER_NET, RAW_NET])


if __name__ == "__main__":
    main()
