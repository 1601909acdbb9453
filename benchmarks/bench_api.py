"""Benchmark: API latency on a store holding many finished runs.

Fills a SQLite store with `--finished` runs (default 100,000; a job and two
workers each, finished, tagged), starts `muster-controlplane` on it as its own
process, and measures, over one plaintext loopback channel per client:

- open loop: GetRun (random ids), ListRuns (a page of 100), CreateCodespec (a
  new version each call) at a fixed `--rate` (default 500 calls/s) for
  `--seconds`: p50 and p99 from each call's *scheduled* start (so a stall
  counts against every call it delays);
- closed loop: `--concurrency` callers doing GetRun back to back: calls/s;
  then the same from `--client-procs` processes of blocking callers in
  threads (gRPC's synchronous client costs less per call than asyncio's),
  with the control plane's CPU time per call, which is what bounds it when
  the client no longer does.

    .venv/bin/python benchmarks/bench_api.py [--finished 100000] [--rate 500] [--seconds 10]

The first closed-loop figure is bounded by this one client process (on 2
cores, client and server share the machine), so it is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fill(db: Path, count: int) -> None:
    """`count` finished runs, written in big transactions (the store's own code)."""
    from controlplane.core import runs as lifecycle
    from controlplane.core.codespec import Codespec
    from controlplane.core.runs import Target
    from controlplane.store.sqlite import SqliteStore

    store = await SqliteStore.open(db)
    job = Target(Codespec(name="j", image="img"), "j")
    worker = Target(
        Codespec(name="w", image="img", kind="worker", endpoints={"http": 80}), "w", replicas=2
    )
    start = datetime.now(UTC) - timedelta(days=1)

    def batch(conn: sqlite3.Connection, first: int, size: int) -> None:
        for i in range(first, first + size):
            run = lifecycle.new_run(0, job, worker, start + timedelta(seconds=i % 80_000))
            run.tags = {"batch": str(i % 100)}
            cur = conn.execute(
                "INSERT INTO runs (status, created_at, doc) VALUES ('Pending', 0, '{}')"
            )
            run.id = int(cur.lastrowid or 0)
            lifecycle.cancel(run, run.created_at + timedelta(seconds=5))
            store._write_run(conn, run)  # the store's own encoding

    for first in range(0, count, 5000):
        size = min(5000, count - first)
        await store._call(store._tx, lambda conn, f=first, s=size: batch(conn, f, s))
    await store.close()


async def open_loop(
    name: str, call: Callable[[int], Awaitable[object]], rate: float, seconds: float
) -> None:
    """Calls at a fixed rate; latency from each call's scheduled start."""
    loop = asyncio.get_running_loop()
    began = loop.time() + 0.1
    latencies: list[float] = []
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            await call(i)
        except grpc.aio.AioRpcError:
            errors += 1
        latencies.append(loop.time() - due)

    tasks = []
    for i in range(int(rate * seconds)):
        due = began + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"  {name:<15} {rate:.0f}/s: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {errors}")


async def closed_loop(call: Callable[[int], Awaitable[object]], callers: int, seconds: float):
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = 0

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while loop.time() < end:
            await call(i)
            done += 1
            i += callers

    await asyncio.gather(*(caller(k) for k in range(callers)))
    return done / seconds


async def measure(address: str, args: argparse.Namespace) -> None:
    from muster.v1 import codespec_pb2 as cpb
    from muster.v1 import codespec_pb2_grpc as cgrpc
    from muster.v1 import run_pb2 as rpb
    from muster.v1 import run_pb2_grpc as rgrpc

    rng = random.Random(1)
    async with grpc.aio.insecure_channel(address) as ch:
        runs, codespecs = rgrpc.RunServiceStub(ch), cgrpc.CodespecServiceStub(ch)

        async def get_run(_: int) -> object:
            return await runs.GetRun(rpb.GetRunRequest(run_id=rng.randint(1, args.finished)))

        async def list_runs(_: int) -> object:
            return await runs.ListRuns(rpb.ListRunsRequest(page_size=args.page))

        async def create_codespec(i: int) -> object:
            spec = cpb.Codespec(name="bench", image="img", env={"I": str(i)})
            return await codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=spec))

        await get_run(0)
        print(f"open loop, {args.seconds:.0f} s each, {args.finished:,} finished runs stored:")
        await open_loop("GetRun", get_run, args.rate, args.seconds)
        await open_loop(f"ListRuns({args.page})", list_runs, args.rate, args.seconds)
        await open_loop("CreateCodespec", create_codespec, args.rate, args.seconds)
        rate = await closed_loop(get_run, args.concurrency, args.seconds)
        print(f"closed loop: GetRun {rate:,.0f} calls/s with {args.concurrency} callers")


def caller_process(address: str, finished: int, seconds: float, threads: int) -> None:
    """`threads` blocking GetRun callers for `seconds`; prints how many calls ended."""
    import threading

    from muster.v1 import run_pb2 as rpb
    from muster.v1 import run_pb2_grpc as rgrpc

    counts = [0] * threads
    with grpc.insecure_channel(address) as ch:
        stub = rgrpc.RunServiceStub(ch)
        stub.GetRun(rpb.GetRunRequest(run_id=1), timeout=30)
        end = time.monotonic() + seconds

        def call(k: int) -> None:
            rng = random.Random(k)
            while time.monotonic() < end:
                stub.GetRun(rpb.GetRunRequest(run_id=rng.randint(1, finished)), timeout=30)
                counts[k] += 1

        workers = [threading.Thread(target=call, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    print(sum(counts), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_loop_processes(address: str, args: argparse.Namespace, server: int) -> None:
    """GetRun back to back from `--client-procs` processes; calls/s and server CPU per call."""
    me = [sys.executable, str(Path(__file__).resolve()), "--caller", address]
    extra = [str(args.finished), str(args.seconds), str(args.concurrency)]
    cpu = cpu_seconds(server)
    procs = [
        subprocess.Popen([*me, *extra], stdout=subprocess.PIPE, text=True)
        for _ in range(args.client_procs)
    ]
    calls = sum(int(p.communicate(timeout=args.seconds + 60)[0].split()[-1]) for p in procs)
    used = cpu_seconds(server) - cpu
    print(
        f"closed loop: GetRun {calls / args.seconds:,.0f} calls/s from {args.client_procs} "
        f"processes x {args.concurrency} blocking callers; the control plane used "
        f"{used / calls * 1e6:.0f} us of CPU per call ({calls / used:,.0f} calls per CPU-second)"
    )


def main() -> None:
    if sys.argv[1:2] == ["--caller"]:
        sys.path.insert(0, str(REPO))
        address, finished, seconds, threads = sys.argv[2:6]
        caller_process(address, int(finished), float(seconds), int(threads))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page", type=int, default=100, help="ListRuns page size")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--profile", default="", help="py-spy the control plane into this file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cp.db"
        began = time.perf_counter()
        asyncio.run(fill(db, args.finished))
        print(f"stored {args.finished:,} finished runs in {time.perf_counter() - began:.1f} s")
        # fmt: off
        proc = subprocess.Popen(
            [str(BIN / "muster-controlplane"), "--insecure", "--listen", address, "--db", str(db),
             "--data-listen", "off", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        # fmt: on
        spy = None
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            if args.profile:
                spy = subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "-p", str(proc.pid), "-o", args.profile,
                     "--format", "raw", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            asyncio.run(measure(address, args))
            closed_loop_processes(address, args, proc.pid)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
