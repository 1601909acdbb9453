"""Gang placement, capacity, pools, spreading and anti-starvation (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controlplane.core.capacity import Capacity
from controlplane.core.scheduler import Demand, NodeView, PendingRun, schedule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CPU1 = Capacity(1000, 2**30, 0)


def node(name: str, pools: str, cpus: int = 4, gpus: int = 0, **kw) -> NodeView:
    return NodeView(
        name, frozenset(pools.split(",")), Capacity(cpus * 1000, 16 * 2**30, gpus), **kw
    )


def run(
    run_id: int,
    workers: int,
    worker_pool: str = "gpu",
    job_pool: str = "cpu",
    each: Capacity = CPU1,
    age: int = 0,
) -> PendingRun:
    demands = []
    if workers:
        demands.append(Demand("worker", worker_pool, workers, each))
    demands.append(Demand("job", job_pool, 1, CPU1))
    return PendingRun(run_id, T0 - timedelta(seconds=age), tuple(demands))


def test_places_workers_in_worker_pool_and_job_in_job_pool() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu")]
    d = schedule(nodes, [run(1, 3)], T0)
    assert d.placements[1] == {
        ("worker", 0): "b",
        ("worker", 1): "b",
        ("worker", 2): "b",
        ("job", 0): "a",
    }


def test_all_or_nothing() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", cpus=2)]
    d = schedule(nodes, [run(1, 3)], T0)
    assert 1 not in d.placements
    assert d.waiting[1] == "waiting for capacity in pool gpu: 2 of 3 workers placed"


def test_capacity_is_reserved_across_runs_in_one_round() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", cpus=3)]
    d = schedule(nodes, [run(1, 2), run(2, 2)], T0)
    assert 1 in d.placements and 2 not in d.placements


def test_allocated_capacity_counts() -> None:
    busy = node("b", "gpu", cpus=3, allocated=Capacity(2000, 0, 0))
    d = schedule([node("a", "cpu"), busy], [run(1, 2)], T0)
    assert d.waiting[1].startswith("waiting for capacity in pool gpu: 1 of 2")


def test_spreads_over_nodes() -> None:
    nodes = [node("a", "cpu"), node("g1", "gpu"), node("g2", "gpu")]
    d = schedule(nodes, [run(1, 2)], T0)
    assert {d.placements[1][("worker", 0)], d.placements[1][("worker", 1)]} == {"g1", "g2"}


def test_unschedulable_nodes_are_skipped() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", schedulable=False)]
    d = schedule(nodes, [run(1, 1)], T0)
    assert d.waiting[1] == "waiting for a ready node in pool gpu"


def test_gpus_are_a_dimension() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", gpus=1)]
    d = schedule(nodes, [run(1, 2, each=Capacity(100, 0, 1))], T0)
    assert d.waiting[1] == (
        "waiting for capacity in pool gpu: 1 of 2 workers placed "
        "(not enough free GPUs: 1 per worker, at most 0 free on one node)"
    )


def test_empty_pool_means_any_node() -> None:
    d = schedule([node("x", "p")], [run(1, 1, worker_pool="", job_pool="")], T0)
    assert set(d.placements[1].values()) == {"x"}


def test_small_runs_backfill_behind_a_big_young_run() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", cpus=2)]
    big, small = run(1, 3, age=5), run(2, 1, age=1)
    d = schedule(nodes, [big, small], T0)
    assert 1 not in d.placements and 2 in d.placements


def test_a_starving_run_holds_its_pool() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", cpus=2)]
    big, small = run(1, 3, age=120), run(2, 1, age=1)
    d = schedule(nodes, [big, small], T0, starvation_after=timedelta(seconds=60))
    assert 1 not in d.placements and 2 not in d.placements
    assert d.waiting[2].startswith("waiting for a ready node")


def test_first_come_first_served() -> None:
    nodes = [node("a", "cpu"), node("b", "gpu", cpus=2)]
    older, newer = run(2, 2, age=10), run(1, 2, age=5)
    d = schedule(nodes, [newer, older], T0)
    assert 2 in d.placements and 1 not in d.placements
