"""Benchmark: the long chaos run on real Podman.

The same chaos as tests/chaos/test_chaos.py (tests/chaos/engine.py): a secure
control plane process and agents on the local Podman, runs of every kind (a job
alone exiting 0 or N, a job with 2 HTTP workers exiting 0 or N, canceled runs)
submitted over a window while the control plane and the agents are SIGKILLed
and restarted at random points (one at a time, never longer than the Lost
period). Then it checks what the test checks (every run ended exactly as its
code says, no container created twice, nothing left) and prints the figures:
kills, recovery times, outcomes, create-to-finish times per kind.

    .venv/bin/python benchmarks/bench_chaos.py [--runs 120] [--agents 3]
        [--submit-window 180] [--chaos-window 240] [--seed N]

Needs scripts/setup.sh to have run. Exits 1 if a check fails. Everything it
starts is stopped and removed when it ends.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.engine import Chaos, processes_mentioning


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--submit-window", type=float, default=180.0)
    parser.add_argument("--chaos-window", type=float, default=240.0)
    parser.add_argument("--settle", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--quiet", action="store_true", help="do not print every kill as it happens"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {platform.node()}, "
        f"seed {seed}: {args.runs} runs over {args.submit_window:.0f} s, "
        f"kills for {args.chaos_window:.0f} s, {args.agents} agents",
        flush=True,
    )
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="muster-bench-chaos-") as tmp:
        with Chaos(
            Path(tmp),
            seed,
            agents=args.agents,
            log=(lambda _line: None) if args.quiet else lambda line: print(line, flush=True),
        ) as chaos:
            report = chaos.run(args.runs, args.submit_window, args.chaos_window, args.settle)
        left = processes_mentioning(Path(tmp))
        containers = chaos.containers()
    print()
    print(report.summary())
    by_kind: dict[str, list[float]] = defaultdict(list)
    for plan in report.plans:
        if plan.index in report.run_seconds:
            by_kind[plan.kind].append(report.run_seconds[plan.index])
    print("create to finish (s):")
    for kind, times in sorted(by_kind.items()):
        times.sort()
        print(
            f"  {kind:<13} n={len(times):<3} median {statistics.median(times):5.1f}  "
            f"max {times[-1]:5.1f}"
        )
    problems = [
        *report.mismatches(),
        *(f"created {n} times: {name}" for name, n in report.duplicates().items()),
        *(f"container left: {c}" for c in report.leftovers),
        *(f"process left: {p}" for p in left),
        *(f"container left after cleanup: {c['Names'][0]}" for c in containers),
    ]
    problems += [f"never seen created: {name}" for name in report.unseen()]
    print(
        f"total {time.monotonic() - begun:.0f} s; {'FAILED' if problems else 'all checks passed'}"
    )
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
