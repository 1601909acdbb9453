"""Node maintenance: cordon, drain, uncordon. The pure decisions (core), their
stored form, and the orchestrator applying them with fake links and a manual
clock (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core import nodes as maintenance
from controlplane.core import runs as lifecycle
from controlplane.core.admission import admit
from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec
from controlplane.core.errors import InvalidArgument, NotFound
from controlplane.core.nodes import Node
from controlplane.core.runs import Replica, Target, Teardown
from controlplane.core.scheduler import Demand, NodeView, PendingRun, schedule
from controlplane.services.orchestrator import Orchestrator
from controlplane.services.run_requests import RunRequest, TargetRequest
from controlplane.store.documents import node_from_doc, node_to_doc
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from tests.controlplane.test_orchestrator import (
    SETTINGS,
    FakeLink,
    build_world,
    report,
    tick,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def a_node(name: str = "n1", pools: tuple[str, ...] = ("cpu",), **kw) -> Node:
    return Node(name, pools, Capacity(4000, 2**33, 0), **kw)


# -- pure decisions -------------------------------------------------------------


def test_cordon_drain_uncordon_and_what_the_list_shows() -> None:
    node = a_node()
    assert node.maintenance == "" and not node.cordoned
    cordoned = maintenance.cordon(node)
    assert (cordoned.cordoned, cordoned.draining, cordoned.maintenance) == (True, False, "Cordoned")
    assert not node.cordoned  # pure: a new node, the old one untouched
    draining = maintenance.drain(cordoned, T0, HOUR)
    assert (draining.cordoned, draining.draining, draining.drain_deadline) == (
        True,
        True,
        T0 + HOUR,
    )
    assert draining.maintenance == "Draining"
    assert maintenance.cordon(draining).draining  # cordon does not end a drain
    again = maintenance.drain(draining, T0 + HOUR / 2, None)
    assert again.draining and again.drain_deadline is None  # a new drain replaces the deadline
    done = maintenance.drained(draining, T0 + HOUR)
    assert (done.cordoned, done.draining, done.drain_deadline, done.drained_at) == (
        True,
        False,
        None,
        T0 + HOUR,
    )
    assert done.maintenance == "Drained"
    back = maintenance.uncordon(done)
    assert (back.cordoned, back.draining, back.drain_deadline, back.drained_at) == (
        False,
        False,
        None,
        None,
    )
    assert maintenance.uncordon(draining).maintenance == ""  # uncordon ends a drain


def test_drain_step() -> None:
    draining = maintenance.drain(a_node(), T0, HOUR)
    assert maintenance.drain_step(a_node(), 3, T0) is None  # not draining
    assert maintenance.drain_step(maintenance.cordon(a_node()), 3, T0) is None
    assert maintenance.drain_step(draining, 0, T0) == "complete"
    assert maintenance.drain_step(draining, 2, T0 + HOUR / 2) == "wait"
    assert maintenance.drain_step(draining, 2, T0 + HOUR) == "deadline"
    assert maintenance.drain_step(draining, 0, T0 + HOUR) == "complete"
    forever = maintenance.drain(a_node(), T0, None)
    assert maintenance.drain_step(forever, 2, T0 + timedelta(days=365)) == "wait"


def test_re_registration_keeps_the_admins_decisions() -> None:
    known = maintenance.drain(a_node(agent_version="1"), T0, HOUR)
    fresh = a_node(agent_version="2", pools=("cpu", "fast"))
    kept = maintenance.keep_maintenance(fresh, known)
    assert (kept.cordoned, kept.draining, kept.drain_deadline) == (True, True, T0 + HOUR)
    assert (kept.agent_version, kept.pools) == ("2", ("cpu", "fast"))  # the agent's facts
    assert maintenance.keep_maintenance(fresh, None) is fresh


def test_scheduler_skips_cordoned_nodes_and_says_why_a_run_waits() -> None:
    cap = Capacity(4000, 2**33, 0)
    one = Capacity(1000, 2**30, 0)
    job = PendingRun(1, T0, (Demand("job", "cpu", 1, one),))
    cordoned = NodeView("a", frozenset({"cpu"}), cap, schedulable=False, cordoned=True)
    free = NodeView("b", frozenset({"cpu"}), cap)
    down = NodeView("c", frozenset({"cpu"}), cap, schedulable=False)
    assert schedule([cordoned, free], [job], T0).placements == {1: {("job", 0): "b"}}
    only_cordoned = schedule([cordoned], [job], T0)
    assert only_cordoned.waiting == {1: "waiting: every node of pool cpu is cordoned"}
    anywhere = PendingRun(2, T0, (Demand("job", "", 1, one),))
    assert schedule([cordoned], [anywhere], T0).waiting == {2: "waiting: every node is cordoned"}
    mixed = schedule([cordoned, down], [job], T0)  # one would be back by itself: not "cordoned"
    assert mixed.waiting == {1: "waiting for a ready node in pool cpu"}


def test_admission_accepts_a_run_whose_pool_is_all_cordoned() -> None:
    cordoned = [NodeView("a", frozenset({"cpu"}), Capacity(4000, 2**33, 0), False, cordoned=True)]
    job = Target(Codespec(name="j", image="i"), "j", "cpu", 1)
    admit(job, None, cordoned)  # cordon is temporary: the run waits Pending


def test_drain_deadline_cancels_only_runs_with_replicas_there() -> None:
    job = Target(Codespec(name="j", image="i"), "j", "cpu", 1)
    worker = Target(Codespec(name="w", image="i", kind="worker"), "w", "gpu", 2)
    run = lifecycle.new_run(7, job, worker, T0)
    lifecycle.place(run, {("worker", 0): "g1", ("worker", 1): "g2", ("job", 0): "c1"}, T0)
    assert lifecycle.drain_deadline_passed(run, "c9", T0) == [] and run.status == "Pending"
    actions = lifecycle.drain_deadline_passed(run, "g2", T0 + HOUR)
    assert run.status == "Canceled"
    assert run.status_reason == "node g2 was drained (deadline passed; worker 1 placed there)"
    assert actions == [Teardown("c1", 7), Teardown("g1", 7), Teardown("g2", 7)]
    assert lifecycle.drain_deadline_passed(run, "g2", T0 + HOUR) == []  # ended already
    assert run.replicas[1] == Replica("worker", 1, "g2")


def test_stored_form_round_trips_and_old_documents_load_schedulable() -> None:
    node = maintenance.drain(a_node(registered_at=T0, last_heartbeat=T0), T0, HOUR)
    assert node_from_doc(node_to_doc(node)) == node
    done = maintenance.drained(node, T0 + HOUR)
    assert node_from_doc(node_to_doc(done)) == done
    old = node_to_doc(a_node())
    for key in ("cordoned", "draining", "drainDeadline", "drainedAt"):
        del old[key]
    loaded = node_from_doc(old)
    assert (loaded.cordoned, loaded.draining, loaded.drain_deadline, loaded.drained_at) == (
        False,
        False,
        None,
        None,
    )


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_every_store_keeps_maintenance(backend: str, tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "db") if backend == "sqlite" else MemoryStore()
    node = maintenance.drain(a_node(), T0, HOUR)
    await store.save_node(node)
    (loaded,) = await store.list_nodes()
    assert (loaded.cordoned, loaded.draining, loaded.drain_deadline) == (True, True, T0 + HOUR)
    await store.close()


# -- the orchestrator applying them ---------------------------------------------


@pytest.fixture
async def world():
    """Two cpu nodes a and b, and codespecs: job `j`, worker `w`."""
    return await build_world(SETTINGS, [a_node("a"), a_node("b")])


JOB = RunRequest(TargetRequest("j", node_pool="cpu"))


async def placed_on(orch: Orchestrator, store, run_id: int) -> str | None:
    await tick(orch)
    return (await store.get_run(run_id)).replicas[0].node


async def later(orch: Orchestrator, clock, delta: timedelta) -> None:
    """Let time pass with both agents heartbeating, then run a reconcile round."""
    clock.now += delta
    for name in ("a", "b"):
        await orch.heartbeat(name)
    await tick(orch)


def listed(orch: Orchestrator, name: str) -> tuple[Node, int]:
    node, _, replicas = next(entry for entry in orch.nodes() if entry[0].name == name)
    return node, replicas


async def test_cordon_waits_and_uncordon_places(world) -> None:
    orch, store, _, links, _ = world
    node, _, _ = await orch.cordon_node("a")
    assert node.cordoned and not node.draining
    assert await placed_on(orch, store, (await orch.create_run(JOB)).id) == "b"
    await orch.cordon_node("b")
    waiting = await orch.create_run(JOB)  # admitted, though every cpu node is cordoned
    assert await placed_on(orch, store, waiting.id) is None
    stored = await store.get_run(waiting.id)
    assert (stored.status, stored.status_reason) == (
        "Pending",
        "waiting: every node of pool cpu is cordoned",
    )
    await orch.uncordon_node("a")
    assert await placed_on(orch, store, waiting.id) == "a"
    assert [s.name for s in links["a"].started] == [waiting.container_name("job", 0)]


async def test_drain_lets_runs_finish_then_is_complete(world) -> None:
    orch, store, clock, links, _ = world
    await orch.cordon_node("b")
    first = await orch.create_run(JOB)
    assert await placed_on(orch, store, first.id) == "a"
    await orch.uncordon_node("b")
    node, _, replicas = await orch.drain_node("a", None)
    assert node.draining and node.cordoned and replicas == 1
    assert await placed_on(orch, store, (await orch.create_run(JOB)).id) == "b"
    await later(orch, clock, timedelta(hours=10))  # no deadline: nothing is canceled
    assert listed(orch, "a")[0].draining
    await report(orch, "a", first.id, "job", 0, "exited", code=0)
    assert (await store.get_run(first.id)).status == "Succeeded"
    await tick(orch)
    node, replicas = listed(orch, "a")
    assert (node.draining, node.cordoned, node.drained_at, replicas) == (
        False,
        True,
        clock.now,
        0,
    )
    assert node.maintenance == "Drained"
    assert links["a"].torn_down == [first.id]


async def test_drain_deadline_cancels_what_is_left(world) -> None:
    orch, store, clock, links, _ = world
    await orch.cordon_node("b")
    run = await orch.create_run(JOB)
    assert await placed_on(orch, store, run.id) == "a"
    await report(orch, "a", run.id, "job", 0, "running")
    await orch.drain_node("a", timedelta(minutes=10))
    await later(orch, clock, timedelta(minutes=9))
    assert (await store.get_run(run.id)).status == "Running"
    await later(orch, clock, timedelta(minutes=1))
    ended = await store.get_run(run.id)
    assert ended.status == "Canceled"
    assert ended.status_reason == "node a was drained (deadline passed; job 0 placed there)"
    assert links["a"].torn_down == [run.id]  # persisted first, then torn down
    node, replicas = listed(orch, "a")
    assert (node.draining, node.maintenance, replicas) == (False, "Drained", 0)
    assert (await store.list_nodes())[0].drained_at == clock.now


async def test_uncordon_ends_a_drain_before_its_deadline(world) -> None:
    orch, store, clock, _, _ = world
    await orch.cordon_node("b")
    run = await orch.create_run(JOB)
    assert await placed_on(orch, store, run.id) == "a"
    await orch.drain_node("a", timedelta(minutes=1))
    await orch.uncordon_node("a")
    await later(orch, clock, HOUR)
    assert (await store.get_run(run.id)).status == "Running"
    assert listed(orch, "a")[0].maintenance == ""


async def test_an_empty_node_is_drained_at_once(world) -> None:
    orch, _, clock, _, _ = world
    node, _, replicas = await orch.drain_node("a", HOUR)
    assert (node.draining, node.maintenance, node.drained_at, replicas) == (
        False,
        "Drained",
        clock.now,
        0,
    )


async def test_re_register_and_restart_keep_maintenance(world) -> None:
    orch, store, clock, _, codespecs = world
    await orch.cordon_node("a")
    run = await orch.create_run(JOB)
    assert await placed_on(orch, store, run.id) == "b"
    await orch.drain_node("b", HOUR)
    await orch.connect(a_node("a"), FakeLink(), [])  # the agent restarted
    assert listed(orch, "a")[0].cordoned
    again = Orchestrator(store, codespecs, SETTINGS, clock, monotonic=clock.mono)  # restarted
    await again.load()
    await again.connect(a_node("b"), FakeLink(), [])
    assert listed(again, "a")[0].maintenance == "Cordoned"
    b = listed(again, "b")[0]
    assert (b.maintenance, b.drain_deadline) == ("Draining", T0 + HOUR)


async def test_unknown_or_missing_names(world) -> None:
    orch, *_ = world
    for call in (orch.cordon_node, orch.uncordon_node):
        with pytest.raises(NotFound, match=r"The node 'x' was not found; `muster node list`"):
            await call("x")
        with pytest.raises(InvalidArgument, match="name: is required"):
            await call("")
    with pytest.raises(NotFound):
        await orch.drain_node("x", None)
