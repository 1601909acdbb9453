"""The scheduler's indexed search against a plain oracle: on random clusters
(pools, cordons, GPUs, full nodes, starving runs) it must make exactly the
decisions of a scheduler that scans every node for every replica."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from controlplane.core.capacity import Capacity
from controlplane.core.scheduler import Decision, Demand, NodeView, PendingRun, schedule

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STARVE = timedelta(seconds=60)


def _fits(room: Capacity, each: Capacity) -> bool:
    return each.fits_in(room)


def oracle(nodes: list[NodeView], pending: list[PendingRun], now: datetime) -> Decision:
    """The rules in their plainest form: oldest first, each replica on the
    fitting schedulable node with the most room (CPU, memory, GPUs, then the
    name read backwards), all or nothing, starving runs hold their pools."""
    free = {n.name: n.allocatable - n.allocated for n in nodes}
    held: set[str] = set()
    out = Decision()
    for run in sorted(pending, key=lambda r: (r.created_at, r.run_id)):
        trial, placed, ok = dict(free), {}, True
        for d in run.demands:
            if not any(n.schedulable and n.in_pool(d.pool) and n.name not in held for n in nodes):
                ok = False  # no node to place on, even for no replicas
            for i in range(d.replicas if ok else 0):
                fitting = [
                    n.name
                    for n in nodes
                    if n.schedulable
                    and n.in_pool(d.pool)
                    and n.name not in held
                    and _fits(trial[n.name], d.each)
                ]
                if not fitting:
                    ok = False
                    break
                room = trial
                best = max(fitting, key=lambda m: (*_key(room[m]), m[::-1]))
                trial[best] = trial[best] - d.each
                placed[(d.role, i)] = best
            if not ok:
                break
        if ok:
            free, out.placements[run.run_id] = trial, placed
            continue
        out.waiting[run.run_id] = "?"
        if now - run.created_at >= STARVE:
            for d in run.demands:
                held |= {n.name for n in nodes if n.in_pool(d.pool)}
    return out


def _key(c: Capacity) -> tuple[int, int, int]:
    return (c.cpu_millis, c.memory_bytes, c.gpus)


def _cluster(rng: random.Random) -> tuple[list[NodeView], list[PendingRun]]:
    pools = ["cpu", "gpu", "big"]
    nodes = []
    for k in range(rng.randint(1, 25)):
        allocatable = Capacity(
            rng.choice([1000, 2000, 4000]), rng.choice([2, 4, 8]) * 2**30, rng.randint(0, 2)
        )
        used = Capacity(rng.choice([0, 0, 500, 1000]), 0, 0)
        cordoned = rng.random() < 0.1
        nodes.append(
            NodeView(
                f"n{k}-{rng.randint(0, 99)}",
                frozenset(rng.sample(pools, rng.randint(1, 2))),
                allocatable,
                used,
                schedulable=not cordoned and rng.random() < 0.9,
                cordoned=cordoned,
            )
        )
    pending = []
    for run_id in range(1, rng.randint(1, 40)):
        each = Capacity(
            rng.choice([250, 500, 1000, 1500]), rng.choice([1, 2]) * 2**29, rng.choice([0, 0, 0, 1])
        )
        demands = [Demand("worker", rng.choice(["", *pools]), rng.randint(0, 4), each)]
        demands.append(Demand("job", rng.choice(["", *pools]), 1, Capacity(250, 2**28, 0)))
        age = rng.choice([0, 10, 120])
        pending.append(PendingRun(run_id, T0 - timedelta(seconds=age), tuple(demands)))
    return nodes, pending


def test_the_indexed_scheduler_decides_as_the_plain_oracle() -> None:
    rng = random.Random(11)
    placed = waited = 0
    for _ in range(400):
        nodes, pending = _cluster(rng)
        got = schedule(nodes, pending, T0, STARVE)
        want = oracle(nodes, pending, T0)
        assert got.placements == want.placements
        assert set(got.waiting) == set(want.waiting)
        placed += len(got.placements)
        waited += len(got.waiting)
    assert placed > 500 and waited > 500  # both paths were exercised
