"""Write-behind for what agents only observe: a report that decides nothing
(a container creating, running, removed) is in force at once and stored with
the next tick; every decision is still stored before it is
acted on, and a graceful stop stores what waits."""

from __future__ import annotations

from controlplane.core.runs import Observation
from controlplane.services.orchestrator import Orchestrator, Report
from tests.controlplane.test_group_commit import CountingStore
from tests.controlplane.test_orchestrator import (
    SETTINGS,
    FakeLink,
    build_world,
    cpu_and_gpu_nodes,
    report,
    request,
    tick,
)


def _state(run, role: str, index: int) -> str:
    replica = run.replica(role, index)
    assert replica is not None
    return replica.state


async def test_an_observation_is_seen_at_once_and_stored_by_the_next_tick() -> None:
    orch, store, _, _, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=2))
    await tick(orch)
    counting = CountingStore(store)
    await report(orch, "b", run.id, "worker", 0, "running", ready=False)
    assert _state(await orch.get_run(run.id), "worker", 0) == "running"
    assert _state(await store.get_run(run.id), "worker", 0) == "pending"
    assert counting.transactions == []
    await tick(orch)
    assert counting.transactions == [[run.id]]
    assert _state(await store.get_run(run.id), "worker", 0) == "running"
    await tick(orch)
    assert counting.transactions == [[run.id]], "a stored change is not stored again"


async def test_a_decision_is_stored_before_it_acts_and_others_still_wait() -> None:
    orch, store, _, links, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    first, second = [await orch.create_run(request(workers=1)) for _ in range(2)]
    await tick(orch)
    counting = CountingStore(store)
    await report(orch, "b", first.id, "worker", 0, "running", ready=False)
    assert counting.transactions == []
    # The second run's worker is ready: its job is released, which is a decision.
    await report(orch, "b", second.id, "worker", 0, "running", ready=True)
    assert [spec.run_id for spec in links["a"].started] == [second.id]
    assert counting.transactions == [[second.id]]
    stored = await store.get_run(second.id)
    assert stored.started_at is not None and stored.replica("worker", 0).ready
    assert _state(await store.get_run(first.id), "worker", 0) == "pending"
    await tick(orch)  # observations of many runs: one transaction per tick
    assert counting.transactions == [[second.id], [first.id]]
    assert _state(await store.get_run(first.id), "worker", 0) == "running"


async def test_a_run_ending_is_never_left_for_later() -> None:
    orch, store, _, _, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=1))
    await tick(orch)
    await report(orch, "b", run.id, "worker", 0, "running", ready=True)
    await report(orch, "a", run.id, "job", 0, "exited", code=0)
    assert (await store.get_run(run.id)).status == "Succeeded"
    counting = CountingStore(store)
    # Its containers' removal after the end is an observation: stored by the tick.
    await report(orch, "b", run.id, "worker", 0, "removed")
    assert counting.transactions == []
    assert _state(await orch.get_run(run.id), "worker", 0) == "removed"
    await tick(orch)
    assert counting.transactions == [[run.id]]
    assert _state(await store.get_run(run.id), "worker", 0) == "removed"


async def test_a_graceful_stop_stores_what_waits() -> None:
    orch, store, _, _, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=1))
    await tick(orch)
    await report(orch, "b", run.id, "worker", 0, "creating")
    assert _state(await store.get_run(run.id), "worker", 0) == "pending"
    await orch.stored()
    assert _state(await store.get_run(run.id), "worker", 0) == "creating"


async def test_an_observation_lost_in_a_crash_comes_back_when_the_agent_registers() -> None:
    orch, store, clock, _, codespecs = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=2))
    await tick(orch)
    await report(orch, "b", run.id, "worker", 0, "running", ready=False)
    # The control plane dies before the tick: the store never saw "running".
    again = Orchestrator(store, codespecs, SETTINGS, clock, monotonic=clock.mono)
    await again.load()
    assert _state(await again.get_run(run.id), "worker", 0) == "pending"
    running = [Report(run.id, Observation("worker", 0, "running", False))]
    await again.connect(cpu_and_gpu_nodes()[1], FakeLink(), running)
    assert _state(await again.get_run(run.id), "worker", 0) == "running"
    await tick(again)
    assert _state(await store.get_run(run.id), "worker", 0) == "running"
