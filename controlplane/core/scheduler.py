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

import bisect
from collections.abc import Sequence
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


class _Rooms:
    """Free capacity per node, and for each pool asked about its schedulable
    nodes sorted by room, so the roomiest node that fits is found from the
    top of a list instead of a pass over every node (a round used to cost
    replicas x nodes). Order: CPU first, then memory, then GPUs; ties are
    broken by name compared from its last character (any fixed order would
    do; this one keeps placements as they were), so the same nodes and runs
    always give the same placement whatever order the nodes registered in."""

    def __init__(self, nodes: Sequence[NodeView]) -> None:
        self.free = {n.name: n.allocatable - n.allocated for n in nodes}
        self._nodes = nodes
        self._sorted: dict[str, list[tuple[int, int, int, str, str]]] = {}
        self._members: dict[str, list[str]] = {}  # node -> the indexed pools it is in

    @staticmethod
    def _key(name: str, room: Capacity) -> tuple[int, int, int, str, str]:
        return (room.cpu_millis, room.memory_bytes, room.gpus, name[::-1], name)

    def ready(self, pool: str) -> list[tuple[int, int, int, str, str]]:
        """The schedulable nodes of `pool` by room (roomiest last), indexed once per round."""
        if pool not in self._sorted:
            members = [n.name for n in self._nodes if n.schedulable and n.in_pool(pool)]
            for name in members:
                self._members.setdefault(name, []).append(pool)
            self._sorted[pool] = sorted(self._key(name, self.free[name]) for name in members)
        return self._sorted[pool]

    def roomiest(self, pool: str, each: Capacity, held: set[str]) -> str | None:
        """The node of `pool` where `each` fits with the most room, outside `held`."""
        cpu, memory, gpus = each.cpu_millis, each.memory_bytes, each.gpus
        for key in reversed(self.ready(pool)):
            if key[0] < cpu:
                return None  # sorted by CPU first: no node below fits either
            if key[1] >= memory and key[2] >= gpus and key[4] not in held:
                return key[4]
        return None

    def set(self, name: str, room: Capacity) -> None:
        """`name` now has `room` free; every index it is in moves it."""
        old, new = self._key(name, self.free[name]), self._key(name, room)
        self.free[name] = room
        for pool in self._members.get(name, ()):
            keys = self._sorted[pool]
            del keys[bisect.bisect_left(keys, old)]
            bisect.insort(keys, new)


def _no_candidates(rooms: _Rooms, pool: str, nodes: dict[str, NodeView], held: set[str]) -> str:
    """Why a demand has no schedulable node outside `held` ("" when it has one)."""
    if any(key[4] not in held for key in rooms.ready(pool)):
        return ""
    members = [n for n in nodes.values() if n.in_pool(pool)]
    if members and all(n.cordoned for n in members):
        every = f"every node of pool {pool}" if pool else "every node"
        return f"waiting: {every} is cordoned"
    return f"waiting for a ready node in {f'pool {pool}' if pool else 'any pool'}"


def _short_of(rooms: _Rooms, demand: Demand, placed: int, held: set[str]) -> str:
    """Why `demand` could not be placed after `placed` of its replicas."""
    pool_text = f"pool {demand.pool}" if demand.pool else "any pool"
    reason = (
        f"waiting for capacity in {pool_text}: {placed} of {demand.replicas} "
        f"{_plural(demand.role, demand.replicas)} placed"
    )
    if demand.each.gpus:
        most = max((k[2] for k in rooms.ready(demand.pool) if k[4] not in held), default=0)
        if demand.each.gpus > most:
            reason += (
                f" (not enough free GPUs: {demand.each.gpus} per {demand.role}, "
                f"at most {max(most, 0)} free on one node)"
            )
    return reason


def _try_place(
    run: PendingRun, rooms: _Rooms, nodes: dict[str, NodeView], held: set[str]
) -> tuple[dict[tuple[str, int], str] | None, str]:
    """Place the whole run, taking its room from `rooms`; if anything does
    not fit, give back what it took and say why."""
    before: dict[str, Capacity] = {}  # free capacity of the nodes it used, before it
    assignment: dict[tuple[str, int], str] = {}
    for demand in run.demands:
        reason = _no_candidates(rooms, demand.pool, nodes, held)
        for index in range(demand.replicas if not reason else 0):
            best = rooms.roomiest(demand.pool, demand.each, held)
            if best is None:
                reason = _short_of(rooms, demand, index, held)
                break
            before.setdefault(best, rooms.free[best])
            rooms.set(best, rooms.free[best] - demand.each)
            assignment[(demand.role, index)] = best
        if reason:
            for name, room in before.items():
                rooms.set(name, room)
            return None, reason
    return assignment, ""


def schedule(
    nodes: Sequence[NodeView],
    pending: Sequence[PendingRun],
    now: datetime,
    starvation_after: timedelta = timedelta(seconds=60),
) -> Decision:
    """Decide which pending runs to place now, and where."""
    by_name = {n.name: n for n in nodes}
    rooms = _Rooms(nodes)
    held: set[str] = set()
    decision = Decision()
    for run in sorted(pending, key=lambda r: (r.created_at, r.run_id)):
        assignment, reason = _try_place(run, rooms, by_name, held)
        if assignment is not None:
            decision.placements[run.run_id] = assignment
            continue
        decision.waiting[run.run_id] = reason
        waited = run.waited if run.waited is not None else now - run.created_at
        if waited >= starvation_after:
            for demand in run.demands:
                held |= {n.name for n in nodes if n.in_pool(demand.pool)}
    return decision
