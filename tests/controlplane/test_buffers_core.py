"""Pure buffer rules: ids, tags, ETags, filters, lifetimes, lifecycle steps."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.core import buffers as core
from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.errors import FailedPrecondition, InvalidArgument, NotFound

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_ids_are_tygers_base32_of_16_bytes() -> None:
    raw = bytes(range(16))
    made = core.new_id(raw)
    assert len(made) == 26 and made == made.lower()
    assert base64.b32decode(made.upper() + "======") == raw
    assert core.validate_id(made) == made
    with pytest.raises(ValueError):
        core.new_id(b"short")


@pytest.mark.parametrize("bad", ["", "A" * 26, "a" * 27, "a" * 25, "a" * 25 + "1", "é" * 26])
def test_malformed_ids_are_refused_naming_the_form(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="26 characters of a-z and 2-7"):
        core.validate_id(bad)


def test_long_text_is_cut_in_messages() -> None:
    with pytest.raises(InvalidArgument) as caught:
        core.validate_id("z" * 10_000)
    assert len(str(caught.value)) < 200


def test_ids_are_deduplicated_and_bounded() -> None:
    good = "a" * 26
    assert core.validate_ids([good, good]) == [good]
    with pytest.raises(InvalidArgument, match="at most 1000"):
        core.validate_ids([core.new_id(i.to_bytes(16, "big")) for i in range(1001)])


def test_tag_limits_are_tygers() -> None:
    core.validate_tags({"k" * 128: "v" * 256, "a.b-c_D9": ""})
    core.validate_tags({f"k{i}": "" for i in range(100)})
    for tags, fragment in [
        ({f"k{i}": "" for i in range(101)}, "at most 100"),
        ({"": "v"}, "tag keys"),
        ({"k" * 129: "v"}, "tag keys"),
        ({"a/b": "v"}, "tag keys"),
        ({"k": "v" * 257}, "tag values"),
        ({"k": "a b"}, "tag values"),
    ]:
        with pytest.raises(InvalidArgument, match=fragment):
            core.validate_tags(tags)


def test_the_etag_covers_id_flag_expiry_and_tags_only() -> None:
    b = Buffer("a" * 26, T0, {"x": "1", "y": "2"}, T0 + timedelta(hours=1))
    assert (
        b.etag == Buffer("a" * 26, T0 + timedelta(days=3), {"y": "2", "x": "1"}, b.expires_at).etag
    )
    assert b.etag == replace(b, expires_at=b.expires_at + timedelta(microseconds=10)).etag  # ms
    for other in (
        replace(b, id="b" * 26),
        replace(b, soft_deleted=True),
        replace(b, expires_at=None),
        replace(b, expires_at=b.expires_at + timedelta(milliseconds=1)),
        replace(b, tags={"x": "1"}),
        replace(b, tags={"x": "1", "y": "3"}),
    ):
        assert other.etag != b.etag


def test_filters_match_tags_exclusions_flag_and_expiry() -> None:
    b = Buffer("a" * 26, T0, {"x": "1", "y": "2"}, T0 + timedelta(hours=1))
    assert core.matches(b, BufferFilter(), T0)
    assert core.matches(b, BufferFilter({"x": "1"}, {"y": "3"}), T0)
    assert not core.matches(b, BufferFilter({"x": "2"}), T0)
    assert not core.matches(b, BufferFilter({}, {"y": "2"}), T0)
    assert not core.matches(b, BufferFilter(soft_deleted=True), T0)
    assert not core.matches(b, BufferFilter(), T0 + timedelta(hours=1))  # expired at its expiry


def test_lifetimes() -> None:
    assert core.expiry(T0, 0) is None
    assert core.expiry(T0, 90) == T0 + timedelta(seconds=90)
    assert core.soft_deleted_expiry(T0, None) == T0 + timedelta(days=1)
    assert core.soft_deleted_expiry(T0, 0) == T0
    assert core.access_ttl(0) == timedelta(hours=1)
    assert core.access_ttl(30) == timedelta(seconds=30)
    for bad in (29, 3601, -1):
        with pytest.raises(InvalidArgument, match="30-3600"):
            core.access_ttl(bad)
    with pytest.raises(InvalidArgument, match="negative"):
        core.expiry(T0, -1)
    with pytest.raises(InvalidArgument, match="at most"):
        core.expiry(T0, 2**63 - 1)


def test_lifecycle_steps() -> None:
    b = Buffer("a" * 26, T0, {"x": "1"})
    gone = core.soft_deleted(b, T0 + timedelta(days=1))
    assert gone.soft_deleted and gone.expires_at == T0 + timedelta(days=1)
    with pytest.raises(FailedPrecondition, match="already soft-deleted"):
        core.soft_deleted(gone, T0)
    with pytest.raises(FailedPrecondition, match="not soft-deleted"):
        core.restored(b)
    with pytest.raises(FailedPrecondition, match="delete it before purging"):
        core.purging(b, T0)
    back = core.restored(replace(gone, expires_at=T0))
    assert not back.soft_deleted and back.expires_at is None
    assert core.purging(gone, T0).expires_at == T0
    with pytest.raises(NotFound, match="was not found"):
        core.found(None, "a" * 26, T0)
    with pytest.raises(NotFound):
        core.found(core.purging(gone, T0), "a" * 26, T0)


def test_updates_merge_or_replace_and_check_the_etag_first() -> None:
    b = Buffer("a" * 26, T0, {"x": "1"})
    kw = {"expires_at": None, "change_expiry": False}
    merged = core.updated(b, tags={"y": "2"}, clear_tags=False, etag=b.etag, **kw)
    assert merged.tags == {"x": "1", "y": "2"}
    assert core.updated(b, tags={"y": "2"}, clear_tags=True, etag="", **kw).tags == {"y": "2"}
    with pytest.raises(FailedPrecondition, match="has changed"):
        core.updated(merged, tags={}, clear_tags=True, etag=b.etag, **kw)
    timed = core.updated(b, tags={}, clear_tags=False, etag="", expires_at=T0, change_expiry=True)
    assert timed.expires_at == T0
    with pytest.raises(NotFound):
        core.updated(replace(b, soft_deleted=True), tags={}, clear_tags=False, etag="", **kw)
