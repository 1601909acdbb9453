"""Reads that cost no store round trip and no conversion: active and recently
ended runs come from memory, and a run's wire form is built once per run object."""

from __future__ import annotations

import pytest

from controlplane.api.convert import run_message
from controlplane.core import runs as lifecycle
from controlplane.core.errors import NotFound
from tests.controlplane.test_orchestrator import SETTINGS, build_world, cpu_and_gpu_nodes, request
from tests.controlplane.test_runs_state import make_run


def test_a_runs_message_is_built_once_and_a_copy_starts_without_it() -> None:
    run = make_run()
    first = run_message(run)
    assert run_message(run) is first
    assert run_message(run, with_events=False) is not first
    copy = lifecycle.clone(run)
    assert copy.derived == {}
    lifecycle.cancel(copy, copy.created_at)
    assert run_message(copy).status != first.status  # the copy's own form, not the old one
    assert run_message(run) is first


async def test_active_and_recently_ended_runs_are_read_without_the_store() -> None:
    orch, store, clock, _, _ = await build_world(SETTINGS, cpu_and_gpu_nodes())
    reads: list[int] = []
    get_run = store.get_run

    async def counted(run_id: int):
        reads.append(run_id)
        return await get_run(run_id)

    store.get_run = counted  # type: ignore[method-assign]
    run = await orch.create_run(request())
    assert (await orch.get_run(run.id)).status == "Pending" and reads == []
    await orch.cancel_run(run.id)
    assert (await orch.get_run(run.id)).status == "Canceled" and reads == []
    # Past half the retention period, retention may delete it: the store decides.
    clock.now += SETTINGS.retain_finished / 2
    assert (await orch.get_run(run.id)).status == "Canceled" and reads == [run.id]
    await store.delete_runs([run.id])
    with pytest.raises(NotFound):
        await orch.get_run(run.id)  # never served from memory once deleted
