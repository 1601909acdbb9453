"""Monotonic time: a wall clock that jumps an hour forward or back fails no
run and loses no node; real time (the monotonic clock) still does both. After
a restart, deadlines count from the stored wall-clock instants, read once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Codespec, Quantities, Resources
from controlplane.core.nodes import Liveness, Node
from controlplane.core.runs import Observation
from controlplane.services.orchestrator import Orchestrator, Report, Settings
from controlplane.services.run_requests import RunRequest, TargetRequest
from tests.controlplane.test_orchestrator import (
    Clock,
    FakeLink,
    build_world,
    cpu_and_gpu_nodes,
    report,
    tick,
)

SETTINGS = Settings(
    readiness_timeout=timedelta(seconds=120),
    liveness=Liveness(timedelta(seconds=10), timedelta(seconds=30)),
)
JUMPS = [timedelta(hours=1), timedelta(hours=-1), timedelta(hours=-1), timedelta(hours=1)]


@pytest.fixture
async def world():
    orch, store, clock, _links, codespecs = await build_world(SETTINGS, cpu_and_gpu_nodes())
    return orch, store, clock, codespecs


def statuses(orch: Orchestrator) -> dict[str, str]:
    return {n.name: n.status for n, _, _ in orch.nodes()}


async def live(orch: Orchestrator, clock: Clock, seconds: float) -> None:
    """Real time passes, with heartbeats from both nodes every 2 s."""
    for _ in range(int(seconds // 2)):
        clock.now += timedelta(seconds=2)
        for name in ("a", "b"):
            await orch.heartbeat(name)
        await tick(orch)
    clock.now += timedelta(seconds=seconds % 2)
    await tick(orch)


def job_only(timeout: int) -> RunRequest:
    return RunRequest(TargetRequest("j", node_pool="cpu"), timeout_seconds=timeout)


async def test_wall_clock_jumps_fail_no_run_and_lose_no_node(world) -> None:
    orch, store, clock, _ = world
    with_workers = await orch.create_run(
        RunRequest(TargetRequest("j", node_pool="cpu"), TargetRequest("w", node_pool="gpu"))
    )
    short = await orch.create_run(job_only(timeout=600))
    await tick(orch)
    await report(orch, "b", with_workers.id, "worker", 0, "creating")  # readiness clock runs
    await report(orch, "a", short.id, "job", 0, "running")
    for jump in JUMPS:
        clock.jump(jump)
        await tick(orch)
        assert statuses(orch) == {"a": "Ready", "b": "Ready"}
        assert (await store.get_run(with_workers.id)).status == "Pending"
        assert (await store.get_run(short.id)).status == "Running"
    clock.jump(timedelta(hours=3))  # by the wall clock, everything is long overdue
    await live(orch, clock, 100)
    assert statuses(orch) == {"a": "Ready", "b": "Ready"}
    assert (await store.get_run(with_workers.id)).status == "Pending"
    # Real time: 120 s after its container started, the worker is overdue.
    await live(orch, clock, 20)
    failed = await store.get_run(with_workers.id)
    assert failed.status == "Failed"
    assert failed.status_reason.startswith("worker 0 was not ready within 120s of its start")
    assert (await store.get_run(short.id)).status == "Running"
    await live(orch, clock, 600 - 120 - 1)
    assert (await store.get_run(short.id)).status == "Running"
    await live(orch, clock, 1)
    timed_out = await store.get_run(short.id)
    assert timed_out.status_reason == "the run timed out after 600s (timeoutSeconds)"


async def test_silence_is_measured_in_real_time(world) -> None:
    orch, store, clock, _ = world
    run = await orch.create_run(job_only(timeout=3600))
    await tick(orch)
    clock.jump(timedelta(hours=1))
    await orch.heartbeat("a")  # b has been silent since it connected, a moment ago
    await tick(orch)
    assert statuses(orch) == {"a": "Ready", "b": "Ready"}
    clock.now += timedelta(seconds=9)
    clock.jump(timedelta(hours=-2))
    await tick(orch)
    assert statuses(orch) == {"a": "Ready", "b": "Ready"}
    clock.now += timedelta(seconds=1)
    await tick(orch)
    assert statuses(orch) == {"a": "NotReady", "b": "NotReady"}
    clock.now += timedelta(seconds=20)
    await tick(orch)
    assert statuses(orch) == {"a": "Lost", "b": "Lost"}
    failed = await store.get_run(run.id)
    assert (failed.status, failed.status_reason) == (
        "Failed",
        "node a was lost (job 0 placed there)",
    )


async def test_after_a_restart_deadlines_count_from_the_stored_instants(world) -> None:
    orch, store, clock, codespecs = world
    run = await orch.create_run(job_only(timeout=600))
    await tick(orch)
    # The control plane is away for 300 s; the new process's monotonic clock
    # has nothing to do with the old one's.
    clock.now += timedelta(seconds=300)
    clock._mono = 7.0
    again = Orchestrator(store, codespecs, SETTINGS, clock, monotonic=clock.mono)
    await again.load()
    for name, pool in (("a", "cpu"), ("b", "gpu")):
        running = [Report(run.id, Observation("job", 0, "running"))] if name == "a" else []
        await again.connect(Node(name, (pool,), Capacity(4000, 2**33, 0)), FakeLink(), running)
    clock.jump(timedelta(hours=2))  # read once at load: later jumps change nothing
    await tick(again)
    assert (await store.get_run(run.id)).status == "Running"
    await live(again, clock, 299)
    assert (await store.get_run(run.id)).status == "Running"
    await live(again, clock, 1)
    failed = await store.get_run(run.id)
    assert failed.status_reason == "the run timed out after 600s (timeoutSeconds)"


async def test_a_drain_deadline_is_measured_in_real_time(world) -> None:
    orch, store, clock, _ = world
    run = await orch.create_run(job_only(timeout=7200))
    await tick(orch)
    await report(orch, "a", run.id, "job", 0, "running")
    await orch.drain_node("a", timedelta(seconds=600))
    for jump in JUMPS:  # by the wall clock the deadline passes (and un-passes)
        clock.jump(jump)
        await tick(orch)
        assert (await store.get_run(run.id)).status == "Running"
    clock.jump(timedelta(hours=2))
    await live(orch, clock, 599)
    assert (await store.get_run(run.id)).status == "Running"
    await live(orch, clock, 1)
    canceled = await store.get_run(run.id)
    assert (canceled.status, canceled.status_reason) == (
        "Canceled",
        "node a was drained (deadline passed; job 0 placed there)",
    )


async def test_starvation_aging_is_measured_in_real_time(world) -> None:
    orch, store, clock, codespecs = world
    whole = Resources(requests=Quantities(cpu="4"))
    await codespecs.create(Codespec(name="big", image="img", resources=whole))
    await codespecs.create(Codespec(name="half", image="img", resources=Resources(Quantities("2"))))
    first = await orch.create_run(RunRequest(TargetRequest("half", node_pool="cpu")))
    await tick(orch)
    big = await orch.create_run(RunRequest(TargetRequest("big", node_pool="cpu")))
    await tick(orch)  # waits for the half that is running
    clock.jump(timedelta(hours=1))  # by the wall clock, big has starved for an hour
    small = await orch.create_run(RunRequest(TargetRequest("half", node_pool="cpu")))
    await tick(orch)
    assert (await store.get_run(small.id)).placed, "a wall-clock jump made big hold the pool"
    await live(orch, clock, 61)  # really starved now: the pool is held for it
    later = await orch.create_run(RunRequest(TargetRequest("half", node_pool="cpu")))
    await live(orch, clock, 2)
    assert not (await store.get_run(later.id)).placed
    assert (await store.get_run(first.id)).placed and not (await store.get_run(big.id)).placed
