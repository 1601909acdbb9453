"""Admission rejects runs that can never be placed, with what would fit."""

from __future__ import annotations

import pytest

from controlplane.core.admission import admit, summarize
from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec, Quantities, Resources
from controlplane.core.errors import FailedPrecondition, InvalidArgument
from controlplane.core.runs import Target
from controlplane.core.scheduler import NodeView

NODES = [
    NodeView("a", frozenset({"cpu"}), Capacity(4000, 8 * 2**30, 0)),
    NodeView("b", frozenset({"gpu"}), Capacity(2000, 4 * 2**30, 0)),
]


def target(kind: str = "job", pool: str = "", replicas: int = 1, **kw) -> Target:
    return Target(Codespec(name=f"{kind}x", image="i", kind=kind, **kw), f"{kind}x", pool, replicas)


def test_fitting_run_is_admitted() -> None:
    admit(target(pool="cpu"), target("worker", "gpu", 5), NODES)


def test_unknown_pool_lists_known_ones() -> None:
    with pytest.raises(FailedPrecondition, match="unknown node pool 'tpu'; known pools: cpu, gpu"):
        admit(target(), target("worker", "tpu"), NODES)


def test_replicas_above_max_replicas() -> None:
    with pytest.raises(FailedPrecondition, match=r"allows at most 2 \(maxReplicas\)"):
        admit(target(), target("worker", replicas=3, max_replicas=2), NODES)


def test_replica_larger_than_every_node_says_what_fits() -> None:
    big = Resources(requests=Quantities(cpu="3"))
    with pytest.raises(FailedPrecondition, match="largest: b with cpu 2, memory 4Gi"):
        admit(target(), target("worker", "gpu", resources=big), NODES)


def test_gpu_in_pool_without_gpus() -> None:
    with pytest.raises(FailedPrecondition, match="no node in pool 'gpu' has GPUs"):
        admit(target(), target("worker", "gpu", resources=Resources(gpu=1)), NODES)


def test_kind_mismatch() -> None:
    with pytest.raises(InvalidArgument, match="is a job codespec and cannot be used as the worker"):
        admit(target(), target("job"), NODES)
    with pytest.raises(InvalidArgument, match="is a worker codespec"):
        admit(target("worker"), None, NODES)


def test_no_nodes_yet_waits_instead_of_rejecting() -> None:
    admit(target(), target("worker"), [])


def test_offers_keep_one_entry_per_node_shape_and_the_first_node_of_each() -> None:
    """A thousand identical nodes are one capacity to check; what a refusal
    names is unchanged (the first node with the largest capacity)."""
    shape, large = Capacity(1000, 2**30, 0), Capacity(2000, 2**30, 0)
    nodes = [NodeView(f"n{i}", frozenset({"cpu"}), shape) for i in range(1000)]
    nodes += [NodeView("big1", frozenset({"cpu", "io"}), large)]
    nodes += [NodeView("big2", frozenset({"io"}), large)]
    offers = summarize(nodes)
    assert offers.pools == {"cpu", "io"}
    assert offers.shapes["cpu"] == ((shape, "n0"), (large, "big1"))
    assert offers.shapes["io"] == ((large, "big1"),)
    assert offers.shapes[""] == ((shape, "n0"), (large, "big1"))
    too_big = Resources(requests=Quantities(cpu="3"))
    for given in (nodes, offers):  # the same answer from the nodes or their summary
        with pytest.raises(FailedPrecondition, match="largest: big1 with cpu 2, memory 1Gi"):
            admit(target(pool="cpu", resources=too_big), None, given)
    admit(target(pool="io", resources=Resources(requests=Quantities(cpu="2"))), None, offers)
