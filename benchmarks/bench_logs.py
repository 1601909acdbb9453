"""Benchmark: logs that survive any output, on real Podman, end to end.

Starts a control plane and one agent as processes on the local Podman (the
control plane with a 1 s heartbeat and NotReady after 3 s, as the e2e tests),
then, for each log reader of the agent (``--log-reader auto``: the containers'
log files; ``api``: Podman's log API), runs the phases ``--phases`` names
(all by default, in this order):

* ``flood``: one job prints ``--lines`` lines of ``--line-bytes`` bytes as
  fast as it can; meanwhile the node's status is polled every 0.2 s and a
  second, small run is started. Prints lines/s from the job to a reader (from
  create, and from the first line readable to the last), how long after the
  run's end its logs were complete (the last line readable; issue 16's target
  is 5 s for 200,000 lines), whether every line arrived (a flood past the
  100 MiB log cap makes conmon start new log files), how fast the library
  reads them back through the API, the second run's time, and peak RSS of
  agent and control plane;
* ``cli`` (needs ``flood``): ``muster run logs RUN`` of the flood's run, output
  to a file: lines/s, with and without the CLI's start (the time it takes for
  the small run's one line), and the CPU-seconds the CLI and the control plane
  spent (the figures load from other work changes least);
* ``long``: one line of ``--long-mb`` MB followed by a short line: time until
  both are readable, and the agent's peak RSS;
* ``nonl``: ``--nonl-mb`` MB with no newline at all: the same figures;
* ``latency``: a job prints one line every 10 ms for ``--latency-seconds``,
  each carrying ``time.time_ns()`` when printed; a reader follows the run's
  logs through the API (``GetRunLogs`` with ``follow``, as ``muster run logs
  -f`` does) and takes, for every line, the time it received it minus the time
  in it (same machine, same clock): count, p50, p95, p99, max (target: p95 at
  most 1 s), and when the follow ended after the last line.

    .venv/bin/python benchmarks/bench_logs.py [--lines 1000000] [--line-bytes 200]
        [--long-mb 50] [--nonl-mb 200] [--latency-seconds 20] [--readers auto,api]
        [--phases flood,cli,long,nonl,latency]

Needs scripts/setup.sh to have run. Everything it starts is stopped and
removed when it ends. The processes it starts and its client of the API are in
logs_support.py, beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import psutil
from logs_support import (
    BIN,
    Bench,
    Peak,
    free_port,
    percentile,
    print_log_tails,
    remove_containers,
    rss,
    start_agent,
    start_control_plane,
    stop,
)

from muster.v1 import run_pb2 as rpb

PYTHON = "localhost/muster-python:latest"
BUSYBOX = "localhost/muster-busybox:latest"


class Flooded:
    """What the flood phase leaves for the CLI phase."""

    def __init__(self, run_id: int, lines: int, small_id: int) -> None:
        self.run_id = run_id
        self.lines = lines
        self.small_id = small_id


@dataclass
class FloodTimes:
    """The flood's runs, and when their steps happened (time.monotonic())."""

    run_id: int
    run: rpb.Run
    began: float
    first: float  # seconds from create to the first line readable
    ended: float
    complete_at: float | None  # the last line readable, or None if it never was
    small_id: int
    small: rpb.Run
    small_took: float


def flood(bench: Bench, pool: str, node: str, agent_pid: int, lines: int, size: int) -> Flooded:
    pad = size - 10
    program = (
        f"import sys\nfor i in range({lines}): "
        f"sys.stdout.write(f'{{i:09d}} ' + 'f' * {pad} + '\\n')"
    )
    bench.codespec(f"flood-{lines}-{size}", PYTHON, ["python3", "-c", program])
    bench.codespec("small", BUSYBOX, ["sh", "-c", "echo small"])
    statuses = Peak(lambda: bench.node_status(node), 0.2)
    agent_rss, cp_rss = Peak(rss(agent_pid)), Peak(rss(bench.cp_pid))
    try:
        times = flood_runs(bench, pool, f"flood-{lines}-{size}", f"{lines - 1:09d} " + "f" * pad)
    finally:
        seen = statuses.stop()
        agent_peaks, cp_peaks = agent_rss.stop(), cp_rss.stop()
    agent_peak, cp_peak = max(agent_peaks, default=0), max(cp_peaks, default=0)
    read_began = time.monotonic()
    got = bench.lines(times.run_id)
    read_took = time.monotonic() - read_began
    print_flood_times(times, lines, size)
    print(
        f"    lines missing {lines - len(set(got)):,}, in order {got == sorted(got)}; read back "
        f"through the API (library, parts joined) at {len(got) / read_took:,.0f} lines/s "
        f"({read_took:.2f}s)"
    )
    names = {1: "Ready", 2: "NotReady", 3: "Lost"}
    print(
        f"    node {sorted({names.get(s, str(s)) for s in seen})} over {len(seen)} looks; "
        f"second run {rpb.RunStatus.Name(times.small.status)} in {times.small_took:.2f}s; "
        f"peak RSS agent {agent_peak / 2**20:.0f} MiB, control plane {cp_peak / 2**20:.0f} MiB"
    )
    return Flooded(times.run_id, lines, times.small_id)


def flood_runs(bench: Bench, pool: str, codespec: str, want: str) -> FloodTimes:
    """The flood's run; once its first line is readable, a small run to its end;
    then the flood's end, and its last line (`want`) readable."""
    began = time.monotonic()
    run_id = bench.create(codespec, pool)
    deadline = began + 300
    while bench.last(run_id) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} printed nothing in 300 s")
        time.sleep(0.02)
    first = time.monotonic() - began
    small_began = time.monotonic()
    small_id = bench.create("small", pool)
    small = bench.wait(small_id, 120)
    small_took = time.monotonic() - small_began
    run = bench.wait(run_id)
    ended = time.monotonic()
    try:
        bench.wait_last(run_id, want, timeout=300)
        complete_at: float | None = time.monotonic()
    except RuntimeError:
        complete_at = None
    return FloodTimes(run_id, run, began, first, ended, complete_at, small_id, small, small_took)


def print_flood_times(t: FloodTimes, lines: int, size: int) -> None:
    print(
        f"  flood {lines:,} lines x {size} B ({lines * size / 1e6:.0f} MB): "
        f"{rpb.RunStatus.Name(t.run.status)} {t.ended - t.began:.2f}s after create; "
        f"first line readable {t.first:.2f}s after create"
    )
    if t.complete_at is None:
        print("    COMPLETE: never (the last line was lost)")
    else:
        # The run's end: when the bench saw it end (GetRun every 0.05 s); the
        # control plane's finished_at and the last line's own time are within
        # a fraction of a second of it.
        print(
            f"    COMPLETE {t.complete_at - t.ended:.2f}s after the run's end (target <= 5 s): "
            f"{lines / (t.complete_at - t.began):,.0f} lines/s from create to the last line "
            f"readable, {lines / (t.complete_at - t.began - t.first):,.0f} lines/s from the "
            f"first line readable to the last"
        )


def cli_read(bench: Bench, flooded: Flooded, env: dict[str, str], out_path: str) -> None:
    """`muster run logs RUN` of the flood's run into a file: lines/s, and the
    CPU it took in the CLI and in the control plane (the figure that load from
    other work on the machine changes least)."""
    muster = [str(BIN / "muster"), "--server", bench.server, "run", "logs"]
    control_plane = psutil.Process(bench.cp_pid)

    def timed(run_id: int) -> tuple[float, int, float, float]:
        """Seconds, lines, CPU-seconds of the CLI and of the control plane."""
        with open(out_path, "wb") as out:
            cli_began = resource.getrusage(resource.RUSAGE_CHILDREN)
            cp_began = sum(control_plane.cpu_times()[:2])
            began = time.monotonic()
            cli = subprocess.Popen(
                [*muster, str(run_id)], stdout=out, stderr=subprocess.PIPE, env=env
            )
            try:
                _, stderr = cli.communicate(timeout=600)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait()
            took = time.monotonic() - began
            cp_cpu = sum(control_plane.cpu_times()[:2]) - cp_began
            cli_ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cli.returncode != 0:
            raise RuntimeError(f"muster run logs {run_id} failed: {stderr.decode()[-500:]}")
        cli_cpu = (cli_ended.ru_utime + cli_ended.ru_stime) - (
            cli_began.ru_utime + cli_began.ru_stime
        )
        with open(out_path, "rb") as out:
            count = sum(chunk.count(b"\n") for chunk in iter(lambda: out.read(1 << 20), b""))
        return took, count, cli_cpu, cp_cpu

    start, _, start_cpu, _ = timed(flooded.small_id)  # a one-line run: the CLI's start
    took, count, cli_cpu, cp_cpu = timed(flooded.run_id)
    os.unlink(out_path)
    net = max(took - start, 1e-9)
    print(
        f"  cli: muster run logs {flooded.run_id} > file: {count:,} lines "
        f"({'all' if count == flooded.lines else f'WANTED {flooded.lines:,}'}) in {took:.2f}s: "
        f"{count / took:,.0f} lines/s (target >= 100,000); without the CLI's start "
        f"({start:.2f}s, {start_cpu:.2f} CPU-s for a one-line run) {count / net:,.0f} lines/s"
    )
    print(
        f"    CPU: the CLI {cli_cpu:.2f}s ({count / max(cli_cpu, 1e-9):,.0f} lines per "
        f"CPU-second), the control plane {cp_cpu:.2f}s "
        f"({count / max(cp_cpu, 1e-9):,.0f} lines per CPU-second)"
    )


def latency(bench: Bench, pool: str, seconds: float) -> None:
    """Lines printed every 10 ms, each with its time, followed through the API."""
    program = (
        "import time\n"
        f"end = time.monotonic() + {seconds}\n"
        "i = 0\n"
        "while time.monotonic() < end:\n"
        "    print(f'lat {i} {time.time_ns()}', flush=True)\n"
        "    i += 1\n"
        "    time.sleep(0.01)\n"
        "print(f'done {i} {time.time_ns()}', flush=True)\n"
    )
    name = f"latency-{seconds:g}"
    bench.codespec(name, PYTHON, ["python3", "-c", program])
    run_id = bench.create(name, pool)
    delays: list[float] = []  # seconds, per line
    printed: int | None = None
    last_written = 0
    call = bench.runs.GetRunLogs(
        rpb.GetRunLogsRequest(run_id=run_id, follow=True), timeout=seconds + 300
    )
    try:
        for reply in call:
            now = time.time_ns()
            for line in reply.lines:
                word, count, written = line.text.split(" ")
                delays.append((now - int(written)) / 1e9)
                last_written = int(written)
                if word == "done":
                    printed = int(count) + 1
        follow_ended = time.time_ns()
    finally:
        call.cancel()
    run = bench.wait(run_id, 60)
    if not delays:
        print(f"  latency: {rpb.RunStatus.Name(run.status)}, no line read")
        return
    ms = [d * 1000 for d in delays]
    print(
        f"  latency, one line every 10 ms for {seconds:g}s followed through the API: "
        f"{rpb.RunStatus.Name(run.status)}, {len(ms):,} lines read of "
        f"{f'{printed:,}' if printed is not None else '?'} printed; print to read p50 "
        f"{percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms (target <= 1000), "
        f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms; the follow ended "
        f"{(follow_ended - last_written) / 1e9:.2f}s after the last line"
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


PHASES = ("flood", "cli", "long", "nonl", "latency")


def parse_args() -> tuple[argparse.Namespace, set[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--line-bytes", type=int, default=200)
    parser.add_argument("--long-mb", type=int, default=50)
    parser.add_argument("--nonl-mb", type=int, default=200)
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--readers", default="auto,api")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}"
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phases {sorted(phases - set(PHASES))}; known: {', '.join(PHASES)}")
    if "cli" in phases and "flood" not in phases:
        parser.error("the cli phase reads the flood's run: add flood to --phases")
    if not 0 < args.latency_seconds <= 600:
        parser.error("--latency-seconds must be in (0, 600]")
    return args, phases


def run_phases(
    bench: Bench,
    node: str,
    agent_pid: int,
    args: argparse.Namespace,
    phases: set[str],
    cli_env: dict[str, str],
    tmp: str,
) -> None:
    """The phases `phases` names, in their order, on the agent `node` (its own pool)."""
    if "flood" in phases:
        flooded = flood(bench, node, node, agent_pid, args.lines, args.line_bytes)
        if "cli" in phases:
            cli_read(bench, flooded, cli_env, f"{tmp}/cli-out.txt")
    if "long" in phases:
        one_line(bench, node, agent_pid, args.long_mb, newline=True)
    if "nonl" in phases:
        one_line(bench, node, agent_pid, args.nonl_mb, newline=False)
    if "latency" in phases:
        latency(bench, node, args.latency_seconds)


def main() -> None:
    args, phases = parse_args()
    server = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "MUSTER_CONFIG": "/nonexistent"}
    nodes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        # The CLI talks plaintext to this control plane only (not to any other
        # the user's credential files name).
        Path(f"{tmp}/cli.json").write_text(json.dumps({"server": server, "insecure": True}))
        cli_env = {**os.environ, "MUSTER_CONFIG": f"{tmp}/cli.json"}
        cp = start_control_plane(tmp, server, env)
        agent: subprocess.Popen[bytes] | None = None
        try:
            with grpc.insecure_channel(server) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                bench = Bench(server, channel, cp.pid)
                print(
                    f"real Podman, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
                    f"load average {os.getloadavg()[0]:.1f}; control plane pid {cp.pid}"
                )
                for reader in args.readers.split(","):
                    node = f"bench-logs-{reader}"
                    nodes.append(node)
                    agent = start_agent(tmp, server, env, node, reader)
                    bench.wait_ready(node)
                    print(
                        f"--log-reader {reader} (agent pid {agent.pid}; load average "
                        f"{os.getloadavg()[0]:.1f}):",
                        flush=True,
                    )
                    run_phases(bench, node, agent.pid, args, phases, cli_env, tmp)
                    sys.stdout.flush()
                    stop(agent)
                    agent = None
        except BaseException:
            print_log_tails(tmp)  # what the processes said
            raise
        finally:
            if agent is not None:
                stop(agent)
            stop(cp)
            remove_containers(nodes)


if __name__ == "__main__":
    main()
