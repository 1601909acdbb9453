"""The Store contract for runs and the CreateRun request ids that made them,
on every backend (store_contract_support.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import T0, finished_run, run_at

store = store_contract_support.store  # the fixture: one parameter per backend


async def test_a_request_id_is_stored_with_its_run(store) -> None:
    from tests.controlplane.test_runs_state import make_run

    first = await store.insert_run(make_run(), "req-0123456789abcdef")
    await store.insert_run(make_run())  # no id: nothing remembered
    assert (await store.run_for_request("req-0123456789abcdef", T0)).run_id == first.id
    assert await store.run_for_request("req-0123456789abcdef", T0 + timedelta(seconds=1)) is None
    assert await store.run_for_request("req-unknown-0123456789", T0) is None
    # The same id again (after it expired) now names the newer run.
    later = make_run()
    later.created_at = T0 + timedelta(days=2)
    second = await store.insert_run(later, "req-0123456789abcdef", "f" * 64)
    known = await store.run_for_request("req-0123456789abcdef", T0 + timedelta(days=1))
    assert known is not None and (known.run_id, known.fingerprint) == (second.id, "f" * 64)
    await store.insert_run(make_run(), "req-old-0123456789abc")
    assert await store.forget_requests(T0 + timedelta(days=1), limit=10) == 1
    assert await store.run_for_request("req-old-0123456789abc", T0) is None
    assert (await store.run_for_request("req-0123456789abcdef", T0)).run_id == second.id


async def test_a_finished_run_read_again_shows_every_change(store) -> None:
    """Reads of finished runs may be served from a decoded copy: a change to
    the stored run (its tags) must show, in get_run and in list_runs."""
    run = await finished_run(store, 1, {"a": "1"})
    for _ in range(2):  # the second read may come from the copy
        assert (await store.get_run(run.id)).tags == {"a": "1"}
    changed = await store.get_run(run.id)
    from controlplane.core import runs as lifecycle

    draft = lifecycle.clone(changed)
    draft.tags = {"a": "2"}
    await store.save_run(draft)
    assert (await store.get_run(run.id)).tags == {"a": "2"}
    listed, _ = await store.list_runs(
        statuses=frozenset(), tags={}, since=None, limit=10, before_id=None
    )
    assert [r.tags for r in listed] == [{"a": "2"}]
    assert changed.tags == {"a": "1"}, "a run handed out earlier was changed in place"


async def test_runs_round_trip_and_their_ids_only_grow(store) -> None:
    from controlplane.store.documents import run_to_doc

    first = await store.insert_run(run_at(0, {"a": "1"}))
    second = await store.insert_run(run_at(1))
    assert 0 < first.id < second.id
    stored = await store.get_run(first.id)
    assert run_to_doc(stored) == run_to_doc(first)
    assert stored.created_at == T0 and stored.tags == {"a": "1"}
    assert await store.get_run(second.id + 100) is None
    assert await store.delete_runs([second.id]) == 1
    third = await store.insert_run(run_at(2))
    assert third.id > second.id  # never the id of a deleted run
    ghost = run_at(3)
    ghost.id = third.id + 100
    with pytest.raises(KeyError):
        await store.save_run(ghost)
    assert await store.get_run(ghost.id) is None


async def test_save_runs_writes_all_or_nothing(store) -> None:
    """One transaction for several runs: every change lands, or (a run that
    does not exist among them) none does."""
    from controlplane.core import runs as lifecycle
    from controlplane.store.documents import run_to_doc

    made = [await store.insert_run(run_at(i, {"n": str(i)})) for i in range(3)]
    drafts = [lifecycle.clone(run) for run in made]
    lifecycle.cancel(drafts[0], T0 + timedelta(hours=1))
    drafts[1].tags = {"n": "changed"}
    await store.save_runs(drafts[:2])
    first, second, third = [await store.get_run(run.id) for run in made]
    assert first.status == "Canceled" and first.tags == {"n": "0"}
    assert second.tags == {"n": "changed"} and second.status == made[1].status
    assert run_to_doc(third) == run_to_doc(made[2])

    again = [lifecycle.clone(third), run_at(9)]
    again[0].tags = {"n": "lost"}
    again[1].id = made[-1].id + 100
    with pytest.raises(KeyError):
        await store.save_runs(again)
    assert (await store.get_run(third.id)).tags == {"n": "2"}, "half a batch was written"
    await store.save_runs([])


async def test_list_runs_pages_newest_first_and_filters(store) -> None:
    from controlplane.core import runs as lifecycle

    made = []
    for i in range(7):
        tags = {"team": "a" if i % 2 else "b", "n": str(i)}
        made.append(await store.insert_run(run_at(i, tags)))
    for run in made[:3]:  # the three oldest finished
        lifecycle.cancel(run, T0 + timedelta(hours=1))
        await store.save_run(run)
    ids = [r.id for r in made]

    seen, before, more = [], None, True
    while more:
        page, more = await store.list_runs(
            statuses=frozenset(), tags={}, since=None, limit=3, before_id=before
        )
        seen += [r.id for r in page]
        before = page[-1].id if page else None
    assert seen == ids[::-1]

    def listed(**kw):
        filters = {"statuses": frozenset(), "tags": {}, "since": None, **kw}
        return store.list_runs(limit=100, before_id=None, **filters)

    page, more = await listed(statuses=frozenset({"Canceled"}))
    assert [r.id for r in page] == ids[2::-1] and not more
    page, _ = await listed(statuses=frozenset({"Canceled", "Pending"}), tags={"team": "a"})
    assert [r.id for r in page] == [ids[5], ids[3], ids[1]]
    page, _ = await listed(tags={"team": "a", "n": "3"})
    assert [r.id for r in page] == [ids[3]]
    page, _ = await listed(tags={"team": "c"})
    assert page == []
    page, _ = await listed(since=T0 + timedelta(minutes=5))
    assert [r.id for r in page] == [ids[6], ids[5]]
    page, more = await store.list_runs(
        statuses=frozenset(), tags={"team": "b"}, since=None, limit=2, before_id=ids[6]
    )
    assert [r.id for r in page] == [ids[4], ids[2]] and more

    assert await store.count_runs(tags={}, since=None) == {"Canceled": 3, "Pending": 4}
    assert await store.count_runs(tags={"team": "a"}, since=None) == {"Canceled": 1, "Pending": 2}
    since = T0 + timedelta(minutes=2)
    assert await store.count_runs(tags={"team": "b"}, since=since) == {
        "Canceled": 1,
        "Pending": 2,
    }
    assert await store.count_runs(tags={"nobody": "x"}, since=None) == {}


async def test_active_runs_are_the_unfinished_ones_oldest_first(store) -> None:
    from controlplane.core import runs as lifecycle
    from controlplane.store.documents import run_to_doc

    made = [await store.insert_run(run_at(i)) for i in range(4)]
    lifecycle.cancel(made[1], T0 + timedelta(hours=1))
    await store.save_run(made[1])
    lifecycle.place(made[3], {("job", 0): "n1", ("worker", 0): "n1", ("worker", 1): "n2"}, T0)
    await store.save_run(made[3])
    active = await store.active_runs()
    assert [r.id for r in active] == [made[0].id, made[2].id, made[3].id]
    assert run_to_doc(active[2]) == run_to_doc(made[3])  # its placement with it
