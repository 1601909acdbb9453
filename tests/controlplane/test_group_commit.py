"""Group commit: changes decided together are stored in one transaction, and
nothing is sent (or believed) before that transaction has committed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from controlplane.coalescer import Coalescer
from controlplane.core.errors import StoreUnavailable
from tests.controlplane.test_orchestrator import (
    SETTINGS,
    build_world,
    cpu_and_gpu_nodes,
    report,
    request,
    tick,
)


class CountingStore:
    """Wraps a store's save_runs: counts transactions and runs, fails on demand."""

    def __init__(self, store) -> None:
        self.transactions: list[list[int]] = []
        self.fail_next = False
        self._save_runs = store.save_runs
        store.save_runs = self.save_runs

    async def save_runs(self, runs) -> None:
        await asyncio.sleep(0)  # a real store hops to its thread: others queue meanwhile
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("disk full")
        self.transactions.append([run.id for run in runs])
        await self._save_runs(runs)


async def test_coalescer_hands_what_queued_meanwhile_to_one_call_in_order() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def handle(items: list[int]) -> None:
        calls.append(items)
        if len(calls) == 1:
            await release.wait()

    coalescer: Coalescer[int] = Coalescer(handle)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *rest)
    assert calls == [[0], [1, 2, 3, 4, 5]]


async def test_coalescer_failure_reaches_every_submitter_of_that_call_only() -> None:
    failing = True

    async def handle(items: list[str]) -> None:
        await asyncio.sleep(0)
        if failing:
            raise StoreUnavailable("down")

    coalescer: Coalescer[str] = Coalescer(handle)
    results = await asyncio.gather(*(coalescer.submit(x) for x in "abc"), return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable] * 3
    failing = False
    await coalescer.submit("d")  # the next call is unaffected


async def test_reports_arriving_together_are_stored_in_one_transaction() -> None:
    orch, store, _, links, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    runs = [await orch.create_run(request(workers=2)) for _ in range(4)]
    ids = [r.id for r in runs]
    counting = CountingStore(store)
    await tick(orch)
    assert counting.transactions == [ids], "one round's placements: one transaction"
    counting.transactions.clear()

    await asyncio.gather(
        *(report(orch, "b", r.id, "worker", i, "running", ready=True) for r in runs for i in (0, 1))
    )
    assert counting.transactions == [ids], "eight reports of four runs: one transaction"
    assert len(links["a"].started) == 4  # every job released
    for run in runs:
        assert (await store.get_run(run.id)).status == "Running"


async def test_a_failed_group_commit_sends_nothing_and_changes_nothing() -> None:
    orch, store, _, links, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    runs = [await orch.create_run(request(workers=1)) for _ in range(3)]
    await tick(orch)
    counting = CountingStore(store)
    counting.fail_next = True
    results = await asyncio.gather(
        *(report(orch, "b", r.id, "worker", 0, "running", ready=True) for r in runs),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [StoreUnavailable] * 3
    assert links["a"].started == [], "a job was released on a change that was not stored"
    for run in runs:
        stored = await store.get_run(run.id)
        assert stored.status == "Pending" and not any(r.ready for r in stored.replicas)
    # The agent reports again (its stream reconnects): now each job starts, once.
    await asyncio.gather(
        *(report(orch, "b", r.id, "worker", 0, "running", ready=True) for r in runs)
    )
    assert sorted(spec.run_id for spec in links["a"].started) == [r.id for r in runs]


async def test_a_tick_fails_every_overdue_run_in_one_transaction() -> None:
    orch, store, clock, links, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    runs = [await orch.create_run(request(workers=1)) for _ in range(3)]
    await tick(orch)
    for run in runs:
        await report(orch, "b", run.id, "worker", 0, "running", ready=False)
    counting = CountingStore(store)
    clock.now += SETTINGS.readiness_timeout + timedelta(seconds=1)
    for node in ("a", "b"):
        orch.touch(node)  # the nodes stay alive: only the readiness deadline passes
    await tick(orch)
    assert counting.transactions == [[r.id for r in runs]]
    for run in runs:
        stored = await store.get_run(run.id)
        assert stored.status == "Failed" and "ready" in stored.status_reason
    assert links["b"].torn_down == [r.id for r in runs]
