"""Gang placement. A pure function over nodes and pending runs.

Rules:
- all replicas of a run (workers in the worker pool, job replicas in the job
  pool) are placed at once or none are;
- requests are reserved against each node's allocatable capacity;
- runs are considered oldest first; a run that does not fit does not block
  smaller ones behind it (backfill) until it has waited `starvation_after`,
  after which the nodes of its pools are held for it, so it cannot starve;
- replicas spread: each goes to the fitting node with the most free capacity;
- nothing is placed on an unschedulable node (NotReady, Lost, disconnected,
  cordoned or draining); a run whose pool has only cordoned nodes waits with
  a reason that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.core.capacity import Capacity


@dataclass(frozen=True)
class NodeView:
    """What the scheduler knows of a node."""

    name: str
    pools: frozenset[str]
    allocatable: Capacity
    allocated: Capacity = field(default_factory=Capacity)
    schedulable: bool = True  # Ready, connected and not cordoned
    cordoned: bool = False  # an admin cordoned (or is draining) it: temporary

    def in_pool(self, pool: str) -> bool:
        """An empty pool means any node."""
        return not pool or pool in self.pools


@dataclass(frozen=True)
class Demand:
    """`replicas` copies of `each`, in `pool`, for one role of a run."""

    role: str
    pool: str
    replicas: int
    each: Capacity


@dataclass(frozen=True)
class PendingRun:
    """A run waiting for placement; demands are placed in order (workers first)."""

    run_id: int
    created_at: datetime
    demands: tuple[Demand, ...]
    waited: timedelta | None = None
    """How long it has waited, as the caller measures time (the orchestrator's
    clock is monotonic); None: `now - created_at`."""


@dataclass
class Decision:
    """Placements made in this round, and why the others wait."""

    placements: dict[int, dict[tuple[str, int], str]] = field(default_factory=dict)
    waiting: dict[int, str] = field(default_factory=dict)


def _plural(role: str, n: int) -> str:
    return f"{role}s" if role == "worker" else ("job replicas" if n != 1 else "job replica")


def _roomiest(
    candidates: Sequence[NodeView],
    taken: dict[str, Capacity],
    free: dict[str, Capacity],
    each: Capacity,
) -> str | None:
    """The node among `candidates` where `each` fits with the most free
    capacity (compared CPU first, then memory, then GPUs), so replicas
    spread. Ties are broken by name, so the same nodes and runs always give
    the same placement whatever order the nodes registered in; names are
    compared from their last character (any fixed order would do; this one
    is kept so placements stay as they were). One pass with no key objects:
    it runs for every replica of every pending run. `taken` holds what the
    run being tried has already used (free capacity left on those nodes),
    over `free`."""
    cpu, memory, gpus = each.cpu_millis, each.memory_bytes, each.gpus
    best, best_key = None, None
    for node in candidates:
        room = taken.get(node.name) or free[node.name]
        if room.cpu_millis < cpu or room.memory_bytes < memory or room.gpus < gpus:
            continue
        key = (room.cpu_millis, room.memory_bytes, room.gpus, node.name[::-1])
        if best_key is None or key > best_key:
            best, best_key = node.name, key
    return best


def _try_place(
    run: PendingRun,
    free: dict[str, Capacity],
    nodes: dict[str, NodeView],
    held: set[str],
    ready: Callable[[str], list[NodeView]],
) -> tuple[dict[tuple[str, int], str] | None, str]:
    """Place the whole run on top of `free` (`ready(pool)`: the schedulable
    nodes of a pool); change `free` only if everything fits."""
    trial: dict[str, Capacity] = {}  # free capacity left where this run placed replicas
    assignment: dict[tuple[str, int], str] = {}
    for demand in run.demands:
        candidates = ready(demand.pool)
        if held:
            candidates = [n for n in candidates if n.name not in held]
        pool_text = f"pool {demand.pool}" if demand.pool else "any pool"
        if not candidates:
            members = [n for n in nodes.values() if n.in_pool(demand.pool)]
            if members and all(n.cordoned for n in members):
                every = f"every node of pool {demand.pool}" if demand.pool else "every node"
                return None, f"waiting: {every} is cordoned"
            return None, f"waiting for a ready node in {pool_text}"
        for index in range(demand.replicas):
            best = _roomiest(candidates, trial, free, demand.each)
            if best is None:
                reason = (
                    f"waiting for capacity in {pool_text}: {index} of {demand.replicas} "
                    f"{_plural(demand.role, demand.replicas)} placed"
                )
                most = max((trial.get(n.name) or free[n.name]).gpus for n in candidates)
                if demand.each.gpus > most:
                    reason += (
                        f" (not enough free GPUs: {demand.each.gpus} per {demand.role}, "
                        f"at most {max(most, 0)} free on one node)"
                    )
                return None, reason
            trial[best] = (trial.get(best) or free[best]) - demand.each
            assignment[(demand.role, index)] = best
    free.update(trial)
    return assignment, ""


def schedule(
    nodes: Sequence[NodeView],
    pending: Sequence[PendingRun],
    now: datetime,
    starvation_after: timedelta = timedelta(seconds=60),
) -> Decision:
    """Decide which pending runs to place now, and where."""
    by_name = {n.name: n for n in nodes}
    pools: dict[str, list[NodeView]] = {}

    def ready(pool: str) -> list[NodeView]:
        """The schedulable nodes of `pool`, listed once per round."""
        if pool not in pools:
            pools[pool] = [n for n in nodes if n.schedulable and n.in_pool(pool)]
        return pools[pool]

    free = {n.name: n.allocatable - n.allocated for n in nodes}
    held: set[str] = set()
    decision = Decision()
    for run in sorted(pending, key=lambda r: (r.created_at, r.run_id)):
        assignment, reason = _try_place(run, free, by_name, held, ready)
        if assignment is not None:
            decision.placements[run.run_id] = assignment
            continue
        decision.waiting[run.run_id] = reason
        waited = run.waited if run.waited is not None else now - run.created_at
        if waited >= starvation_after:
            for demand in run.demands:
                held |= {n.name for n in nodes if n.in_pool(demand.pool)}
    return decision
