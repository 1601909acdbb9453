"""What a node says when it registers again, after being cut off: containers
of a finished run it no longer has are recorded as gone, and a container
left from another placement of a run is not taken for that run's own."""

from __future__ import annotations

from datetime import timedelta

from controlplane.core.runs import Observation
from controlplane.services.orchestrator import Report
from tests.controlplane.test_orchestrator import (
    SETTINGS,
    FakeLink,
    build_world,
    cpu_and_gpu_nodes,
    report,
    request,
)


async def test_a_finished_runs_containers_missing_at_registration_are_recorded_gone() -> None:
    orch, store, clock, _, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=1))
    await orch.reconcile()
    await report(orch, "b", run.id, "worker", 0, "running", ready=False)
    clock.now += SETTINGS.liveness.lost + timedelta(seconds=1)
    orch.touch("a")  # only b falls silent
    await orch.reconcile()
    failed = await store.get_run(run.id)
    assert failed.status == "Failed" and "b" in failed.status_reason
    assert failed.replica("worker", 0).state == "running"  # as last heard

    node_b = cpu_and_gpu_nodes()[1]
    await orch.connect(node_b, FakeLink(), [])  # it fenced itself: nothing left
    stored = await store.get_run(run.id)
    assert stored.replica("worker", 0).state == "removed"
    assert stored.status == "Failed" and stored.status_reason == failed.status_reason
    assert any("was gone when b registered again" in e.message for e in stored.events)


async def test_a_container_of_another_placement_is_not_the_replicas_own() -> None:
    orch, store, _, links, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    run = await orch.create_run(request(workers=1))
    await orch.reconcile()
    generation = links["b"].started[0].generation
    await report(orch, "b", run.id, "worker", 0, "running", ready=False)

    def register(gen: int) -> list[Report]:
        return [Report(run.id, Observation("worker", 0, "running", generation=gen))]

    node_b = cpu_and_gpu_nodes()[1]
    await orch.connect(node_b, FakeLink(), register(generation))  # its own: carries on
    assert (await store.get_run(run.id)).status == "Pending"
    await orch.connect(node_b, FakeLink(), register(generation + 1))
    stored = await store.get_run(run.id)
    assert stored.status == "Failed", "a stale container stood in for the replica"
