"""What TLS and token checks cost: GetRun latency and CreateRun throughput
against a real `muster-controlplane` process, secure (TLS + bearer token, the
default) and insecure (--insecure: plaintext, no checks), side by side.

    .venv/bin/python benchmarks/bench_security.py [--calls 2000] [--creates 1000] [--concurrency 8]

Each mode gets a fresh control plane and database; the client reuses one
channel (as the CLI's long commands and any real client do), so the TLS
handshake is paid once and what is measured is the per-call cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import Process, start_process


def open_channel(cp: Process) -> grpc.aio.Channel:
    """The admin's channel: TLS and token when secure, plaintext otherwise."""
    if cp.config is None:
        return grpc.aio.insecure_channel(cp.address)
    config = json.loads(cp.config.read_text())
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(config["caCert"].encode()),
        grpc.access_token_call_credentials(config["token"]),
    )
    return grpc.aio.secure_channel(cp.address, creds)


def pct(samples: list[float], q: float) -> float:
    """The q-quantile of samples, in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(cp: Process, calls: int, creates: int, concurrency: int) -> dict[str, float]:
    async with open_channel(cp) as ch:
        await cgrpc.CodespecServiceStub(ch).CreateCodespec(
            cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="bench", image="img"))
        )
        runs = rgrpc.RunServiceStub(ch)
        request = rpb.CreateRunRequest(
            run=rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="bench")))
        )
        run_id = (await runs.CreateRun(request)).run.id
        for _ in range(50):  # warm up
            await runs.GetRun(rpb.GetRunRequest(run_id=run_id))
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await runs.GetRun(rpb.GetRunRequest(run_id=run_id))
            latencies.append(time.perf_counter() - t0)
        remaining = creates

        async def creator() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await runs.CreateRun(request)

        t0 = time.perf_counter()
        await asyncio.gather(*(creator() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "p50": pct(latencies, 0.50),
        "p99": pct(latencies, 0.99),
        "mean": statistics.fmean(latencies) * 1000,
        "creates_per_s": creates / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="GetRun calls (sequential)")
    parser.add_argument("--creates", type=int, default=1000, help="CreateRun calls")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent CreateRun callers")
    args = parser.parse_args()
    results = {}
    for mode, secure in (("insecure", False), ("secure", True)):
        with tempfile.TemporaryDirectory() as tmp:
            cp = start_process(Path(tmp) / "cp.db", secure=secure)
            try:
                results[mode] = asyncio.run(measure(cp, args.calls, args.creates, args.concurrency))
            finally:
                cp.stop()
    print(
        f"GetRun x{args.calls} sequential; CreateRun x{args.creates}, "
        f"{args.concurrency} concurrent callers; one channel per mode"
    )
    print(f"{'':28}{'insecure':>12}{'secure':>12}{'ratio':>8}")
    for key, label in (
        ("p50", "GetRun p50 (ms)"),
        ("p99", "GetRun p99 (ms)"),
        ("mean", "GetRun mean (ms)"),
        ("creates_per_s", "CreateRun (runs/s)"),
    ):
        a, b = results["insecure"][key], results["secure"][key]
        print(f"{label:28}{a:12.2f}{b:12.2f}{b / a:8.2f}")


if __name__ == "__main__":
    main()
