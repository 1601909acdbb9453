"""GPU devices: choosing free devices per replica (pure), and the orchestrator
storing them with the run before any start, freeing them when the run ends and
keeping them across a control plane restart (SQLite)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.api.convert import node_to_pb, run_to_pb, start_to_pb
from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec, Resources, from_document, gpu_count
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import FailedPrecondition, InvalidArgument
from controlplane.core.gpus import (
    GpuShortage,
    allocated_gpus,
    assign_devices,
    choose_devices,
    devices_in_use,
)
from controlplane.core.nodes import Liveness, Node
from controlplane.core.runs import Replica, Run, Target
from controlplane.services.codespecs import CodespecService
from controlplane.services.orchestrator import Orchestrator, Settings
from controlplane.services.run_requests import RunRequest, TargetRequest
from controlplane.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
G = [f"nvidia.com/gpu={i}" for i in range(4)]


# -- pure assignment -------------------------------------------------------------


def test_choose_takes_the_first_free_devices_in_node_order() -> None:
    assert choose_devices(G, {G[0], G[2]}, 2) == (G[1], G[3])
    assert choose_devices(G, set(), 0) == ()
    with pytest.raises(GpuShortage, match="2 GPU device\\(s\\) needed, 1 free"):
        choose_devices(G[:2], {G[0]}, 2)


def test_every_replica_gets_its_own_devices() -> None:
    placement = {("worker", 0): "a", ("worker", 1): "a", ("worker", 2): "b", ("job", 0): "a"}
    out = assign_devices(
        placement,
        {"worker": 1, "job": 0},
        {"a": G[:3], "b": ["x.com/gpu=0", "x.com/gpu=1"]},
        {"a": {G[0]}},
    )
    assert out == {
        ("worker", 0): (G[1],),
        ("worker", 1): (G[2],),
        ("worker", 2): ("x.com/gpu=0",),
    }


def test_a_shortage_names_the_node() -> None:
    placement = {("worker", 0): "a", ("worker", 1): "a", ("job", 0): "a"}
    with pytest.raises(GpuShortage, match="node a: 1 GPU device\\(s\\) needed, 0 free"):
        assign_devices(placement, {"worker": 1, "job": 1}, {"a": G[:3]}, {"a": {G[0]}})


def test_assignment_is_in_role_and_index_order_and_skips_needless_replicas() -> None:
    placement = {("job", 0): "a", ("worker", 1): "a", ("worker", 0): "a"}
    out = assign_devices(placement, {"worker": 2, "job": 0}, {"a": G}, {})
    assert out == {("worker", 0): (G[0], G[1]), ("worker", 1): (G[2], G[3])}


def test_count_only_nodes_give_no_devices() -> None:
    out = assign_devices({("worker", 0): "a"}, {"worker": 2}, {"a": ()}, {})
    assert out == {}


def test_in_use_counts_only_active_runs() -> None:
    spec = Codespec(name="w", image="i", kind="worker")
    live = Run(1, Target(spec, "w"), None, T0)
    live.replicas = [Replica("job", 0, node="a", gpu_devices=(G[0],))]
    done = Run(2, Target(spec, "w"), None, T0, status="Succeeded")
    done.replicas = [Replica("job", 0, node="a", gpu_devices=(G[1],))]
    assert devices_in_use([live, done]) == {"a": {G[0]}}


def test_the_scheduler_never_sees_more_free_gpus_than_free_devices() -> None:
    assert allocated_gpus(G[:2], set(), 0) == 0
    assert allocated_gpus(G[:2], {G[0]}, 1) == 1
    # held devices the node no longer lists do not hide free ones; a count
    # of requests above what the devices show stays
    assert allocated_gpus(G[:2], {"old=9"}, 1) == 1
    assert allocated_gpus(G[:2], {G[0], G[1]}, 0) == 2


# -- quantities -------------------------------------------------------------------


def test_gpu_counts_accept_quantity_strings() -> None:
    assert [gpu_count(v) for v in (0, 2, "1", "2", "1.0", " 3 ")] == [0, 2, 1, 2, 1, 3]
    for bad in ("0.5", "abc", -1, "2000", True):
        with pytest.raises(InvalidArgument) as info:
            gpu_count(bad)  # type: ignore[arg-type]
        assert info.value.field == "resources.gpu"
    doc = {"kind": "worker", "image": "i", "resources": {"gpu": "1"}}
    assert from_document("w", doc).resources.gpu == 1


# -- the orchestrator -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class RecordingLink:
    """Checks, at every start, that the database already holds the start's devices."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.started: list[ContainerSpec] = []
        self.torn_down: list[int] = []

    def start(self, spec: ContainerSpec) -> None:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            (doc,) = conn.execute("SELECT doc FROM runs WHERE id = ?", (spec.run_id,)).fetchone()
        (stored,) = [
            r
            for r in json.loads(doc)["replicas"]
            if (r["role"], r["index"]) == (spec.role, spec.index)
        ]
        assert tuple(stored["gpuDevices"]) == spec.gpu_devices
        self.started.append(spec)

    def teardown(self, run_id: int) -> None:
        self.torn_down.append(run_id)

    def close(self) -> None:
        pass


SETTINGS = Settings(liveness=Liveness(timedelta(seconds=10), timedelta(seconds=30)))
DEVICES = {"g1": ("t.io/gpu=0", "t.io/gpu=1"), "g2": ("t.io/gpu=0", "t.io/gpu=1")}


async def make(path: Path, clock: Clock) -> tuple[Orchestrator, SqliteStore, dict]:
    store = await SqliteStore.open(path)
    codespecs = CodespecService(store, clock)
    orch = Orchestrator(store, codespecs, SETTINGS, clock)
    await orch.load()
    links = {name: RecordingLink(path) for name in ("c", "g1", "g2")}
    await orch.connect(Node("c", ("cpu",), Capacity(4000, 2**33, 0)), links["c"], [])
    for name, devices in DEVICES.items():
        node = Node(name, ("gpu",), Capacity(4000, 2**33, 2), gpu_devices=devices)
        await orch.connect(node, links[name], [])
    return orch, store, links


async def tick(orch: Orchestrator) -> None:
    await orch.reconcile()


def gpu_request(workers: int) -> RunRequest:
    return RunRequest(
        TargetRequest("j", node_pool="cpu"),
        TargetRequest("gw", node_pool="gpu", replicas=workers),
    )


def devices_held(stored: Run, links: dict) -> list[tuple[str | None, tuple[str, ...]]]:
    """Three workers, each with one device of its own (none twice), the job with
    none; the starts, the events and the wire forms carry exactly those.
    Returns (node, devices) per worker."""
    held = [(w.node, w.gpu_devices) for w in stored.workers]
    assert all(len(devices) == 1 for _, devices in held)
    assert len({(node, devices) for node, devices in held}) == 3  # no device twice
    assert stored.jobs[0].gpu_devices == ()
    sent = [(n, s.index, s.gpu_devices) for n in ("g1", "g2") for s in links[n].started]
    assert sorted(sent) == sorted(
        (w.node, w.index, w.gpu_devices) for w in stored.workers
    )  # every start carries exactly the stored devices
    assert any("with GPU t.io/gpu=" in e.message for e in stored.events)
    msg = run_to_pb(stored)
    assert [list(r.gpu_devices) for r in msg.replicas[:3]] == [list(d) for _, d in held]
    assert list(start_to_pb(links[held[0][0]].started[0]).gpu_devices) == list(
        links[held[0][0]].started[0].gpu_devices
    )
    return held


def gpus_shown_in_use(orch: Orchestrator) -> dict[str, set[str]]:
    """The three devices in use, and each GPU node's wire form agrees with its allocation."""
    in_use = orch.gpus_in_use()
    assert sum(len(v) for v in in_use.values()) == 3
    for node, allocated, _count in orch.nodes():
        if node.name in DEVICES:
            pb = node_to_pb(node, allocated, _count, in_use.get(node.name, ()))
            assert len(pb.gpu_devices_in_use) == pb.allocated.gpus
            assert list(pb.gpu_devices) == list(DEVICES[node.name])
    return in_use


async def test_devices_are_stored_distinct_freed_and_kept_across_restart(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "cp.db"
    orch, store, links = await make(db, clock)
    codespecs = CodespecService(store, clock)
    await codespecs.create(Codespec(name="j", image="img"))
    await codespecs.create(
        Codespec(name="gw", image="img", kind="worker", resources=Resources(gpu=1))
    )

    first = await orch.create_run(gpu_request(3))
    await tick(orch)
    stored = await store.get_run(first.id)
    held = devices_held(stored, links)

    # A run needing two more GPUs waits, saying GPUs are short (one is free).
    second = await orch.create_run(gpu_request(2))
    await tick(orch)
    waiting = await store.get_run(second.id)
    assert not waiting.placed
    assert "not enough free GPUs" in waiting.status_reason

    in_use = gpus_shown_in_use(orch)

    # Restart: a new orchestrator on the same database keeps the assignment.
    await store.close()
    orch, store, links = await make(db, clock)
    assert orch.gpus_in_use() == in_use
    await tick(orch)
    assert not (await store.get_run(second.id)).placed
    restored = await store.get_run(first.id)
    assert [(w.node, w.gpu_devices) for w in restored.workers] == held
    resent = {(n, s.index): s.gpu_devices for n in ("g1", "g2") for s in links[n].started}
    assert resent == {(w.node, w.index): w.gpu_devices for w in restored.workers}

    # The first run ends: its devices are free and the second run gets two.
    await orch.cancel_run(first.id)
    assert orch.gpus_in_use() == {}
    await tick(orch)
    placed = await store.get_run(second.id)
    assert placed.placed
    devices = [(w.node, w.gpu_devices) for w in placed.workers]
    assert len(set(devices)) == 2 and all(len(d) == 1 for _, d in devices)
    ended = await store.get_run(first.id)
    assert all(w.gpu_devices for w in ended.workers)  # the record keeps its history
    await store.close()


async def test_gpu_runs_in_a_pool_without_gpus_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    orch, store, _ = await make(tmp_path / "cp.db", clock)
    codespecs = CodespecService(store, clock)
    await codespecs.create(
        Codespec(name="gj", image="img", resources=Resources(gpu=1)),
    )
    with pytest.raises(FailedPrecondition, match="has GPUs"):
        await orch.create_run(RunRequest(TargetRequest("gj", node_pool="cpu")))
    with pytest.raises(FailedPrecondition, match="more than any node"):
        await codespecs.create(Codespec(name="g3", image="img", resources=Resources(gpu=3)))
        await orch.create_run(RunRequest(TargetRequest("g3", node_pool="gpu")))
    await store.close()
