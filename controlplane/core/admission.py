"""Admission: reject at creation a run that can never be placed (docs/contract.md §2.1).

A run that could fit later (capacity in use, a node NotReady, every node of
its pool cordoned or draining) is admitted and waits; only what no known node
could ever satisfy is refused. Cordon is temporary, so cordoned nodes count
here exactly like schedulable ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.core.capacity import Capacity
from controlplane.core.errors import FailedPrecondition, InvalidArgument
from controlplane.core.runs import Target
from controlplane.core.scheduler import NodeView

MAX_RUN_REPLICAS = 1000
"""Replicas one run may ask for per role. A codespec may declare a larger
maxReplicas (up to codespec.MAX_DECLARED_REPLICAS); a run
is held to the smaller of the two."""


def check_kind(target: Target, role: str) -> None:
    """A job codespec cannot be used as a worker, nor the reverse."""
    if target.codespec.kind != role:
        name = target.reference or "the inline codespec"
        raise InvalidArgument(
            f"{role}.codespec",
            f"codespec '{name}' is a {target.codespec.kind} codespec and cannot be used as the "
            f"{role}; create it with kind {role}",
        )


def check_replicas(target: Target, role: str) -> None:
    """Replicas are at least 1 and at most the codespec's maxReplicas."""
    if not 1 <= target.replicas <= MAX_RUN_REPLICAS:
        raise InvalidArgument(f"{role}.replicas", f"must be between 1 and {MAX_RUN_REPLICAS}")
    limit = target.codespec.max_replicas
    if limit is not None and target.replicas > limit:
        raise FailedPrecondition(
            f"{role}.replicas: {target.replicas} replicas requested but codespec "
            f"'{target.codespec.name}' allows at most {limit} (maxReplicas)"
        )


@dataclass(frozen=True)
class Offers:
    """What admission needs to know of the nodes, summarised once per change of
    the nodes: the pools, and per pool ("" for every node) each distinct
    capacity a node offers, with the first node offering it. Clusters have few
    node shapes, so a create checks a handful of capacities, not every node."""

    pools: frozenset[str]
    shapes: Mapping[str, tuple[tuple[Capacity, str], ...]]


def summarize(nodes: Sequence[NodeView]) -> Offers:
    """The Offers of `nodes` (cordoned ones included: cordon is temporary)."""
    shapes: dict[str, dict[Capacity, str]] = {}
    for node in nodes:
        for pool in ("", *sorted(node.pools)):
            shapes.setdefault(pool, {}).setdefault(node.allocatable, node.name)
    return Offers(
        frozenset(p for n in nodes for p in n.pools),
        {pool: tuple(offered.items()) for pool, offered in shapes.items()},
    )


def check_fits(target: Target, role: str, offers: Offers) -> None:
    """The pool exists, and one replica fits on at least one of its nodes."""
    pool = target.node_pool
    if pool and pool not in offers.pools:
        known = ", ".join(sorted(offers.pools)) or "none (no agent has registered)"
        raise FailedPrecondition(
            f"{role}.nodePool: unknown node pool '{pool}'; known pools: {known}"
        )
    members = offers.shapes.get(pool, ())
    if not members:
        return  # no node registered yet: the run waits for one
    each = target.request
    where = f"pool '{pool}'" if pool else "the cluster"
    if each.gpus and not any(offered.gpus for offered, _ in members):
        raise FailedPrecondition(
            f"{role}: a {role} replica requests {each.gpus} GPU(s) but no node in {where} "
            "has GPUs; choose a pool with GPUs"
        )
    if not any(each.fits_in(offered) for offered, _ in members):
        largest, name = max(members, key=lambda member: member[0])
        raise FailedPrecondition(
            f"{role}: a {role} replica requests {each.describe()}, more than any node in "
            f"{where} offers (largest: {name} with {largest.describe()}); "
            "lower the requests or add a larger node"
        )


def admit(job: Target, worker: Target | None, nodes: Offers | Sequence[NodeView]) -> None:
    """Raise InvalidArgument or FailedPrecondition if the run can never be placed."""
    offers = nodes if isinstance(nodes, Offers) else summarize(nodes)
    check_kind(job, "job")
    check_replicas(job, "job")
    if worker is not None:
        check_kind(worker, "worker")
        check_replicas(worker, "worker")
    check_fits(job, "job", offers)
    if worker is not None:
        check_fits(worker, "worker", offers)
