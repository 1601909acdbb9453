"""The Store contract for retention: finished runs deleted with their logs,
logs capped per run, on every backend (store_contract_support.py)."""

from __future__ import annotations

from datetime import timedelta

from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import T0, finished_run, lines

store = store_contract_support.store  # the fixture: one parameter per backend


async def test_retention_deletes_finished_runs_with_their_logs_tags_and_ids(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    old = await finished_run(store, 1, {"team": "a"}, "old-request-0123456789")
    recent = await finished_run(store, 60, {"team": "a"})
    active = await store.insert_run(make_run())
    for run in (old, recent, active):
        await store.append_logs(lines(run.id, 30))
    cutoff = T0 + timedelta(minutes=30)
    assert await store.finished_before(cutoff, 10) == [old.id]
    assert await store.delete_logs(old.id, 20) == 20  # a big run goes in chunks
    assert await store.delete_logs(old.id, 20) == 10
    assert await store.delete_logs(old.id, 20) == 0
    assert await store.delete_runs([old.id]) == 1
    assert await store.get_run(old.id) is None
    assert await store.finished_before(cutoff, 10) == []
    assert await store.count_runs(tags={"team": "a"}, since=None) == {"Canceled": 1}
    assert await store.run_for_request("old-request-0123456789", T0) is None
    assert await store.read_logs(old.id, since_ns=None, max_id=None, after=None, limit=100) == []
    assert (
        len(await store.read_logs(recent.id, since_ns=None, max_id=None, after=None, limit=99))
        == 30
    )
    assert await store.finished_before(T0 + timedelta(days=1), 10) == [recent.id]  # not active
    assert await store.delete_runs([]) == 0
    await store.compact(100)


async def test_a_runs_logs_are_capped_oldest_first_with_one_marker(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    run = await store.insert_run(make_run())
    other = await store.insert_run(make_run())
    await store.append_logs(lines(run.id, 100))  # 100 lines of 100 bytes
    await store.append_logs(lines(other.id, 5))
    assert await store.log_usage(run.id) == (10_000, 0)
    assert await store.runs_over_log_cap(5000, 10) == [run.id]
    marker = "[muster] {dropped} earlier log lines were dropped"
    dropped = await store.drop_oldest_logs(run.id, 5000, 1000, marker)
    assert dropped == 52  # down to the cap, with room for the marker
    assert await store.drop_oldest_logs(run.id, 5000, 1000, marker) == 0
    kept = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=1000)
    assert kept[0].line.text == "[muster] 52 earlier log lines were dropped"
    assert [s.line.sequence for s in kept[1:]] == list(range(52, 100))
    size, total = await store.log_usage(run.id)
    assert size <= 5000 and total == 52
    # More arrives; the marker is replaced and counts everything dropped so far.
    await store.append_logs(lines(run.id, 20, start=100))
    assert await store.drop_oldest_logs(run.id, 5000, 1000, marker) == 21
    kept = await store.read_logs(run.id, since_ns=None, max_id=None, after=None, limit=1000)
    assert [s.line.text for s in kept].count("[muster] 73 earlier log lines were dropped") == 1
    assert kept[0].line.text.startswith("[muster] 73")
    assert [s.line.sequence for s in kept[1:]] == list(range(73, 120))
    tail = await store.tail_logs(run.id, count=1, since_ns=None, max_id=None)
    assert tail[0].line.sequence == 119
    assert await store.runs_over_log_cap(5000, 10) == []
    assert await store.log_usage(other.id) == (500, 0)


async def test_finished_runs_come_oldest_first_and_capped_runs_largest_first(store) -> None:
    runs = [await finished_run(store, minutes) for minutes in (30, 10, 20)]
    cutoff = T0 + timedelta(hours=1)
    assert await store.finished_before(cutoff, 10) == [runs[1].id, runs[2].id, runs[0].id]
    assert await store.finished_before(cutoff, 2) == [runs[1].id, runs[2].id]
    assert await store.finished_before(T0 + timedelta(minutes=20), 10) == [runs[1].id]
    for run, count in zip(runs, (3, 10, 6), strict=True):
        await store.append_logs(lines(run.id, count))
    assert await store.runs_over_log_cap(250, 10) == [runs[1].id, runs[2].id, runs[0].id]
    assert await store.runs_over_log_cap(250, 1) == [runs[1].id]
    assert await store.runs_over_log_cap(1000, 10) == []
    assert await store.delete_runs([runs[1].id, runs[1].id + 100]) == 1
    assert await store.log_usage(runs[1].id) == (0, 0)
    assert await store.runs_over_log_cap(250, 10) == [runs[2].id, runs[0].id]
    assert await store.compact(10) >= 0
