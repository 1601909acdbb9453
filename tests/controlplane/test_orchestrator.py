"""The orchestrator with fake agent links and a manual clock (no network, no Podman)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec, Quantities, Resources
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import AlreadyExists, FailedPrecondition
from controlplane.core.nodes import Liveness, Node
from controlplane.core.runs import Observation
from controlplane.services.codespecs import CodespecService
from controlplane.services.orchestrator import Orchestrator, Report, Settings
from controlplane.services.run_requests import RunRequest, TargetRequest
from controlplane.store.memory import MemoryStore


class Clock:
    """The wall clock and a monotonic one: `now += d` is time passing (both
    move); `jump(d)` moves the wall clock alone (NTP, a VM resumed)."""

    def __init__(self) -> None:
        self._wall = datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0

    @property
    def now(self) -> datetime:
        return self._wall

    @now.setter
    def now(self, value: datetime) -> None:
        self._mono += (value - self._wall).total_seconds()
        self._wall = value

    def jump(self, delta: timedelta) -> None:
        self._wall += delta

    def __call__(self) -> datetime:
        return self._wall

    def mono(self) -> float:
        return self._mono


class FakeLink:
    def __init__(self) -> None:
        self.started: list[ContainerSpec] = []
        self.torn_down: list[int] = []
        self.closed = False

    def start(self, spec: ContainerSpec) -> None:
        self.started.append(spec)

    def teardown(self, run_id: int) -> None:
        self.torn_down.append(run_id)

    def close(self) -> None:
        self.closed = True


SETTINGS = Settings(liveness=Liveness(timedelta(seconds=10), timedelta(seconds=30)))


async def build_world(
    settings: Settings, nodes: list[Node]
) -> tuple[Orchestrator, MemoryStore, Clock, dict[str, FakeLink], CodespecService]:
    """A memory store, a fake clock, codespecs `j` (job) and `w` (worker), and an
    orchestrator with `nodes` connected, each through a FakeLink."""
    store, clock = MemoryStore(), Clock()
    codespecs = CodespecService(store, clock)
    await codespecs.create(Codespec(name="w", image="img", kind="worker", endpoints={"http": 80}))
    await codespecs.create(Codespec(name="j", image="img"))
    orch = Orchestrator(store, codespecs, settings, clock, monotonic=clock.mono)
    links = {node.name: FakeLink() for node in nodes}
    for node in nodes:
        await orch.connect(node, links[node.name], [])
    return orch, store, clock, links, codespecs


def cpu_and_gpu_nodes() -> list[Node]:
    """Node a in pool cpu, node b in pool gpu (no GPU devices)."""
    return [
        Node(name, (pool,), Capacity(4000, 2**33, 0)) for name, pool in (("a", "cpu"), ("b", "gpu"))
    ]


@pytest.fixture
async def world():
    return await build_world(SETTINGS, cpu_and_gpu_nodes())


def request(workers: int = 2) -> RunRequest:
    return RunRequest(
        TargetRequest("j", node_pool="cpu"), TargetRequest("w", node_pool="gpu", replicas=workers)
    )


async def tick(orch: Orchestrator) -> None:
    await orch.reconcile()


async def report(orch, node, run_id, role, index, state, ready=False, code=None):
    await orch.report(node, Report(run_id, Observation(role, index, state, ready, code)))


async def test_full_lifecycle(world) -> None:
    orch, store, _, links, _ = world
    run = await orch.create_run(request())
    await tick(orch)
    cluster = await store.cluster_id()
    assert [s.name for s in links["b"].started] == [
        f"muster-{cluster[:6]}-run-{run.id}-worker-0",
        f"muster-{cluster[:6]}-run-{run.id}-worker-1",
    ]
    assert {s.cluster_id for s in links["b"].started} == {cluster}
    assert links["a"].started == []
    for i in range(2):
        await report(orch, "b", run.id, "worker", i, "running", ready=True)
    assert [s.name for s in links["a"].started] == [f"muster-{cluster[:6]}-run-{run.id}-job-0"]
    assert (await store.get_run(run.id)).status == "Running"
    await report(orch, "a", run.id, "job", 0, "exited", code=0)
    stored = await store.get_run(run.id)
    assert stored.status == "Succeeded"
    assert links["a"].torn_down == [run.id] and links["b"].torn_down == [run.id]


async def test_admission_errors_store_nothing(world) -> None:
    orch, store, *_ = world
    with pytest.raises(FailedPrecondition, match="unknown node pool 'tpu'"):
        await orch.create_run(RunRequest(TargetRequest("j"), TargetRequest("w", node_pool="tpu")))
    assert await store.count_runs(tags={}, since=None) == {}


async def test_capacity_wait_then_placement(world) -> None:
    orch, store, _, _links, codespecs = world
    await codespecs.create(
        Codespec(name="big", image="img", kind="worker", resources=Resources(Quantities(cpu="3")))
    )
    big = RunRequest(TargetRequest("j", node_pool="cpu"), TargetRequest("big", node_pool="gpu"))
    first = await orch.create_run(big)
    second = await orch.create_run(big)
    await tick(orch)
    assert (await store.get_run(first.id)).placed
    waiting = await store.get_run(second.id)
    assert not waiting.placed
    assert waiting.status_reason == "waiting for capacity in pool gpu: 0 of 1 workers placed"
    await orch.cancel_run(first.id)
    await tick(orch)
    assert (await store.get_run(second.id)).placed


async def test_reconnect_resends_unstarted_and_adopts_running(world) -> None:
    orch, store, _, links, _ = world
    run = await orch.create_run(request())
    await tick(orch)
    await report(orch, "b", run.id, "worker", 0, "running", ready=True)
    fresh = FakeLink()
    adopted = [Report(run.id, Observation("worker", 0, "running", True))]
    await orch.connect(Node("b", ("gpu",), Capacity(4000, 2**33, 0)), fresh, adopted)
    assert [s.index for s in fresh.started] == [1]  # only the one not yet running
    assert fresh.torn_down == [] and links["b"].closed and not fresh.closed
    stored = await store.get_run(run.id)
    assert stored.status == "Pending" and stored.replica("worker", 0).ready


async def test_restart_keeps_runs_and_tears_down_leftovers(world) -> None:
    orch, store, clock, _links, codespecs = world
    run = await orch.create_run(request())
    await tick(orch)
    await orch.cancel_run(run.id)
    again = Orchestrator(store, codespecs, SETTINGS, clock, monotonic=clock.mono)
    await again.load()
    link = FakeLink()
    leftover = [Report(run.id, Observation("worker", 0, "running", True))]
    await again.connect(Node("b", ("gpu",), Capacity(4000, 2**33, 0)), link, leftover)
    assert link.torn_down == [run.id]


async def test_lost_node_fails_its_runs_only(world) -> None:
    orch, store, clock, _links, _ = world
    run = await orch.create_run(request())
    local = await orch.create_run(RunRequest(TargetRequest("j", node_pool="cpu")))
    await tick(orch)
    clock.now += timedelta(seconds=11)
    await orch.heartbeat("a")
    await tick(orch)
    assert {n.name: n.status for n, _, _ in orch.nodes()} == {"a": "Ready", "b": "NotReady"}
    clock.now += timedelta(seconds=20)
    await orch.heartbeat("a")
    await tick(orch)
    failed = await store.get_run(run.id)
    assert failed.status == "Failed" and failed.status_reason.startswith("node b was lost")
    assert (await store.get_run(local.id)).status == "Running"


async def test_cancel_finished_run_is_failed_precondition(world) -> None:
    orch, store, *_ = world
    run = await orch.create_run(request())
    await orch.cancel_run(run.id)
    before = await store.get_run(run.id)
    with pytest.raises(FailedPrecondition, match="already finished"):
        await orch.cancel_run(run.id)
    assert await store.get_run(run.id) == before  # nothing changed


async def test_reconnect_without_a_running_container_fails_its_run(world) -> None:
    orch, store, _, _, _ = world
    run = await orch.create_run(request())
    await tick(orch)
    for i in range(2):
        await report(orch, "b", run.id, "worker", i, "running", ready=True)
    only_one = [Report(run.id, Observation("worker", 0, "running", True))]
    await orch.connect(Node("b", ("gpu",), Capacity(4000, 2**33, 0)), FakeLink(), only_one)
    stored = await store.get_run(run.id)
    assert (stored.status, stored.status_reason) == ("Failed", "worker 1 exited unexpectedly")


async def test_a_start_that_cannot_be_sent_fails_only_that_run(world) -> None:
    orch, store, _, links, _ = world

    def broken(spec: ContainerSpec) -> None:
        raise ValueError("Value out of range")

    links["b"].start = broken  # type: ignore[method-assign]
    run = await orch.create_run(request())
    await tick(orch)
    stored = await store.get_run(run.id)
    assert stored.status == "Failed" and "Value out of range" in stored.status_reason


async def test_a_second_live_agent_with_the_same_name_is_refused(world) -> None:
    orch, *_ = world
    first = Node("c", ("cpu",), Capacity(1000, 2**30, 0), instance_id="one")
    await orch.connect(first, FakeLink(), [])
    same_process = Node("c", ("cpu",), Capacity(1000, 2**30, 0), instance_id="one")
    await orch.connect(same_process, FakeLink(), [])  # a reconnect of the same agent is fine
    other = Node("c", ("cpu",), Capacity(1000, 2**30, 0), instance_id="two")
    with pytest.raises(AlreadyExists, match="node name 'c' is in use by another connected agent"):
        await orch.connect(other, FakeLink(), [])
