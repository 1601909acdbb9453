"""The capacity ledger: per-node totals kept up to date run by run must equal
the totals summed afresh over the active runs, after any sequence of
placements, moves, GPU assignments, ends and reloads."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec, Quantities, Resources
from controlplane.core.gpus import devices_in_use
from controlplane.core.ledger import Ledger
from controlplane.core.runs import Replica, Run, Target

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODES = ["a", "b", "c"]
DEVICES = [f"x.com/gpu={i}" for i in range(4)]


def _target(kind: str, cpu: str, gpus: int) -> Target:
    res = Resources(requests=Quantities(cpu=cpu, memory="64Mi"), gpu=gpus)
    return Target(Codespec(name=kind, image="i", kind=kind, resources=res), kind)


def _run(rng: random.Random, run_id: int) -> Run:
    workers = rng.randint(0, 3)
    worker = (
        _target("worker", f"{rng.randint(1, 9) * 100}m", rng.randint(0, 1)) if workers else None
    )
    run = Run(run_id, _target("job", "250m", 0), worker, T0)
    run.replicas = [Replica("worker", i) for i in range(workers)] + [Replica("job", 0)]
    return run


def _reshuffle(rng: random.Random, run: Run) -> None:
    """Place, move or unplace some replicas; hand out or take back devices."""
    for r in run.replicas:
        if rng.random() < 0.5:
            r.node = rng.choice([*NODES, None])
            wants = run.worker is not None and r.role == "worker" and run.worker.request.gpus
            r.gpu_devices = (rng.choice(DEVICES),) if r.node and wants else ()


def _expected(runs: dict[int, Run]) -> tuple[dict[str, Capacity], dict[str, int]]:
    allocated: dict[str, Capacity] = {}
    counts: dict[str, int] = {}
    for run in runs.values():
        for r in run.replicas:
            if r.node:
                target = run.worker if r.role == "worker" else run.job
                assert target is not None
                allocated[r.node] = allocated.get(r.node, Capacity()) + target.request
                counts[r.node] = counts.get(r.node, 0) + 1
    return allocated, counts


def _check(ledger: Ledger, runs: dict[int, Run]) -> None:
    allocated, counts = _expected(runs)
    assert ledger.allocated() == allocated
    assert ledger.counts() == counts
    assert ledger.devices_in_use() == devices_in_use(runs.values())


def test_the_ledger_equals_a_fresh_sum_after_any_sequence_of_changes() -> None:
    rng = random.Random(7)
    ledger, runs, next_id = Ledger(), {}, 1
    for _ in range(2_000):
        step = rng.random()
        if step < 0.3 or not runs:
            run = _run(rng, next_id)
            next_id += 1
            runs[run.id] = run
            ledger.put(run)
        elif step < 0.8:
            run = runs[rng.choice(list(runs))]
            _reshuffle(rng, run)
            ledger.put(run)
        elif step < 0.9:  # it ended: a terminal run holds nothing
            run = runs.pop(rng.choice(list(runs)))
            run.status = "Succeeded"
            ledger.put(run)
        else:
            ledger.drop(runs.pop(rng.choice(list(runs))).id)
        _check(ledger, runs)
    assert any(ledger.devices_in_use().values()) or not runs
    ledger.reset(runs.values())
    _check(ledger, runs)


def test_an_empty_node_leaves_no_entry_behind() -> None:
    ledger = Ledger()
    run = Run(1, _target("job", "500m", 0), None, T0)
    run.replicas = [Replica("job", 0, node="a")]
    ledger.put(run)
    assert ledger.allocated() == {"a": Capacity(500, 64 * 2**20)}
    assert ledger.counts() == {"a": 1}
    run.replicas[0].node = "b"
    ledger.put(run)
    assert set(ledger.allocated()) == {"b"} and ledger.counts() == {"b": 1}
    ledger.drop(1)
    assert ledger.allocated() == {} and ledger.counts() == {} and ledger.devices_in_use() == {}
