"""Chaos on real Podman: a control plane process and three agents are SIGKILLed
and restarted at random points while runs go through them (tests/chaos/engine.py
says what and how). Every run must end exactly as its code says, no container
may be created twice (Podman's create events), and nothing may be left.

MUSTER_CHAOS_SEED=N reproduces the plan (runs, kill targets, timings); the seed
is printed. benchmarks/bench_chaos.py is the long version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.engine import LOST_AFTER, MAX_DOWN, Chaos, processes_mentioning, seed_from_env
from tests.e2e.conftest import podman

pytestmark = pytest.mark.podman

RUNS = 24
SUBMIT_WINDOW = 30.0
CHAOS_WINDOW = 45.0
SETTLE = 90.0


def test_runs_end_right_through_kills_and_restarts(tmp_path: Path, podman_ready: None) -> None:
    assert MAX_DOWN * 2 < LOST_AFTER  # a kill never outlasts the Lost period: outcomes are exact
    seed = seed_from_env()
    print(f"\nchaos seed {seed}")
    with Chaos(tmp_path, seed) as chaos:
        report = chaos.run(RUNS, SUBMIT_WINDOW, CHAOS_WINDOW, SETTLE)
        print(report.summary())
        targets = {k.target for k in report.kills}
        assert "cp" in targets and targets - {"cp"}, (
            f"not every kind of process was killed: {report.kills}"
        )
        assert not report.mismatches(), "\n".join(report.mismatches())
        assert not report.leftovers, f"containers left after every run ended: {report.leftovers}"
        assert not report.duplicates(), f"containers created more than once: {report.duplicates()}"
        assert not report.unseen(), f"containers never seen created: {report.unseen()}"
    assert not processes_mentioning(tmp_path), processes_mentioning(tmp_path)
    assert not chaos.containers()
    assert chaos.cluster is not None
    assert podman("network", "exists", chaos.cluster.network, check=False).returncode != 0
