"""Tyger's fields on the control plane: resources.shm rules, stored run fields
(cluster, buffer lifetimes, job tags) that survive the store, and run ETags."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from controlplane.core.codespec import Codespec, Resources, normalize, same_content, validate
from controlplane.core.errors import InvalidArgument
from controlplane.core.runs import Target, new_run
from controlplane.core.tyger import TygerFields, etag_of, validate_fields
from controlplane.store.documents import run_from_doc, run_to_doc

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _spec(shm: str | None) -> Codespec:
    return Codespec(name="s", image="i", resources=Resources(shm=shm))


def test_shm_is_a_memory_quantity_compared_by_value() -> None:
    validate(_spec("1Gi"))
    assert same_content(normalize(_spec("1Gi")), normalize(_spec("1024Mi")))
    assert not same_content(_spec("1Gi"), _spec(None))
    for bad, fragment in (("lots", "not a quantity"), ("0", "not a size"), ("2Ei", "not a size")):
        with pytest.raises(InvalidArgument, match=fragment) as err:
            validate(_spec(bad))
        assert err.value.field == "resources.shm"


def test_tyger_run_fields_are_checked_and_survive_the_store() -> None:
    fields = TygerFields("west", "0.01:00:00", {"team": "x"}, "1.00:00")
    validate_fields(fields)
    for bad in (
        replace(fields, cluster="no spaces"),
        replace(fields, buffer_access_ttl="1h"),
        replace(fields, job_buffer_ttl="tomorrow"),
    ):
        with pytest.raises(InvalidArgument):
            validate_fields(bad)
    run = new_run(7, Target(_spec(None), "s"), None, NOW)
    run.tyger = fields
    assert run_from_doc(run_to_doc(run)).tyger == fields
    older = run_to_doc(run)
    del older["tyger"]  # a run stored before these fields
    assert run_from_doc(older).tyger == TygerFields()


def test_etag_changes_with_what_a_user_sees() -> None:
    run = new_run(7, Target(_spec(None), "s"), None, NOW)
    first = etag_of(run)
    assert etag_of(run) == first
    run.tags = {"a": "1"}
    tagged = etag_of(run)
    assert tagged != first
    run.status = "Canceled"
    assert etag_of(run) not in (first, tagged)
