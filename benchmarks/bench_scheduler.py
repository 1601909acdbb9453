"""Benchmark: one gang-scheduling round over many nodes and pending runs.

    .venv/bin/python benchmarks/bench_scheduler.py [--nodes 500] [--runs 2000]

Prints the time per round and how many runs were placed. Pure CPU, no I/O.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from controlplane.core.capacity import Capacity
from controlplane.core.scheduler import Demand, NodeView, PendingRun, schedule


def fleet(count: int, rng: random.Random) -> list[NodeView]:
    pools = ["cpu", "gpu", "big"]
    return [
        NodeView(
            f"node-{i}",
            frozenset({pools[i % 3]}),
            Capacity(
                rng.choice([8, 16, 32]) * 1000, rng.choice([32, 64]) * 2**30, 4 if i % 3 == 1 else 0
            ),
        )
        for i in range(count)
    ]


def backlog(count: int, rng: random.Random, now: datetime) -> list[PendingRun]:
    runs = []
    for i in range(count):
        workers = Demand(
            "worker",
            rng.choice(["gpu", "big", "cpu"]),
            rng.randint(1, 16),
            Capacity(rng.choice([500, 1000, 2000]), rng.choice([1, 2, 4]) * 2**30, 0),
        )
        job = Demand("job", "cpu", 1, Capacity(500, 2**30, 0))
        runs.append(PendingRun(i + 1, now - timedelta(seconds=count - i), (workers, job)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    nodes, runs = fleet(args.nodes, rng), backlog(args.runs, rng, now)
    times, placed = [], 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        decision = schedule(nodes, runs, now)
        times.append(time.perf_counter() - start)
        placed = len(decision.placements)
    replicas = sum(d.replicas for r in runs for d in r.demands)
    print(f"scheduler: {args.nodes} nodes, {args.runs} pending runs ({replicas} replicas)")
    print(
        f"  round: median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms over {args.rounds} rounds"
    )
    print(f"  placed {placed} runs in one round; {args.runs - placed} wait for capacity")


if __name__ == "__main__":
    main()
