"""Codespec use cases: versioning, no-op creates, concurrency, NOT_FOUND messages."""

from __future__ import annotations

import asyncio
import itertools
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings

from controlplane.core.codespec import Codespec, Quantities, Resources
from controlplane.core.errors import InvalidArgument, NotFound
from controlplane.services.codespecs import CodespecService
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from tests.controlplane.test_codespec import codespecs


async def test_create_version_and_noop() -> None:
    svc = CodespecService(MemoryStore())
    a, created = await svc.create(Codespec(name="x", image="i", env={"A": "1"}))
    assert (a.version, created) == (1, True)
    b, created = await svc.create(Codespec(name="x", image="i", env={"A": "1"}))
    assert (b.version, created) == (1, False)
    c, created = await svc.create(Codespec(name="x", image="i", env={"A": "2"}))
    assert (c.version, created) == (2, True)


async def test_invalid_spec_stores_nothing() -> None:
    store = MemoryStore()
    svc = CodespecService(store)
    with pytest.raises(InvalidArgument):
        await svc.create(Codespec(name="x", image="i", endpoints={"http": 80}))
    assert await store.latest_codespec("x") is None


async def test_not_found_names_latest() -> None:
    svc = CodespecService(MemoryStore())
    await svc.create(Codespec(name="x", image="i"))
    await svc.create(Codespec(name="x", image="j"))
    with pytest.raises(
        NotFound,
        match=re.escape(
            "The version '7' of codespec 'x' was not found. The latest version is '2'."
        ),
    ):
        await svc.get("x", 7)
    with pytest.raises(NotFound, match="codespec 'y' was not found"):
        await svc.get("y")
    assert (await svc.resolve("x/versions/1", "job.codespec")).image == "i"


async def test_concurrent_creates_never_duplicate_or_gap(tmp_path) -> None:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        svc = CodespecService(store)
        images = [f"img{i % 5}" for i in range(40)]
        random.Random(1).shuffle(images)
        await asyncio.gather(*(svc.create(Codespec(name="race", image=i)) for i in images))
        latest = await store.latest_codespec("race")
        versions = [await store.get_codespec("race", v) for v in range(1, latest.version + 1)]
        assert all(v is not None for v in versions)
        for prev, nxt in itertools.pairwise(versions):
            assert prev.image != nxt.image  # no two consecutive identical versions
    finally:
        await store.close()


async def test_concurrent_identical_creates_give_one_version(tmp_path) -> None:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        svc = CodespecService(store)
        results = await asyncio.gather(
            *(svc.create(Codespec(name="same", image="i")) for _ in range(20))
        )
        assert {r[0].version for r in results} == {1}
        assert sum(created for _, created in results) == 1
    finally:
        await store.close()


async def test_a_burst_of_creates_takes_turns_instead_of_retrying(tmp_path) -> None:
    """N concurrent creates of one name cost about N store round trips each way,
    not N squared (optimistic retries alone livelocked a burst of 5,000); a
    second service on the same store (another process) still never makes a
    gap, through the retry."""
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    try:
        calls = {"insert_codespec": 0}
        insert = store.insert_codespec

        async def counted(spec):
            calls["insert_codespec"] += 1
            return await insert(spec)

        store.insert_codespec = counted  # type: ignore[method-assign]
        one, other = CodespecService(store), CodespecService(store)
        made = await asyncio.gather(
            *(one.create(Codespec(name="burst", image=f"i{n}")) for n in range(200))
        )
        assert sorted(v.version for v, _ in made) == list(range(1, 201))
        assert calls["insert_codespec"] == 200  # not one refused attempt
        mixed = await asyncio.gather(
            *(svc.create(Codespec(name="burst", image=f"j{n}-{k}")) for n in range(20)
              for k, svc in enumerate((one, other)))
        )  # fmt: skip
        assert sorted(v.version for v, _ in mixed) == list(range(201, 241))
    finally:
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codespecs())
def test_equal_specs_give_one_version(pair: tuple[Codespec, Codespec]) -> None:
    async def scenario() -> None:
        svc = CodespecService(MemoryStore())
        first, _ = await svc.create(pair[0])
        second, created = await svc.create(pair[1])
        assert (second.version, created) == (first.version, False)

    asyncio.run(scenario())


def test_resources_written_differently_are_one_version() -> None:
    async def scenario() -> None:
        svc = CodespecService(MemoryStore())
        await svc.create(Codespec(name="r", image="i", resources=Resources(Quantities("1", "1Gi"))))
        _, created = await svc.create(
            Codespec(name="r", image="i", resources=Resources(Quantities("1000m", "1024Mi")))
        )
        assert created is False

    asyncio.run(scenario())
