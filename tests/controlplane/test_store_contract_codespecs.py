"""The Store contract for codespecs, on every backend (store_contract_support.py)."""

from __future__ import annotations

import pytest

from controlplane.core.errors import Conflict
from tests.controlplane import store_contract_support
from tests.controlplane.store_contract_support import T0, spec

store = store_contract_support.store  # the fixture: one parameter per backend


async def test_insert_and_read_back(store) -> None:
    await store.insert_codespec(spec("a", 1))
    await store.insert_codespec(spec("a", 2, image="img2"))
    latest = await store.latest_codespec("a")
    assert (latest.version, latest.image, latest.env) == (2, "img2", {"A": "1"})
    assert (await store.get_codespec("a", 1)).image == "img"
    assert (await store.get_codespec("a", 1)).created_at == T0
    assert await store.get_codespec("a", 3) is None
    assert await store.latest_codespec("zzz") is None


async def test_versions_cannot_gap_or_repeat(store) -> None:
    await store.insert_codespec(spec("a", 1))
    with pytest.raises(Conflict):
        await store.insert_codespec(spec("a", 1))
    with pytest.raises(Conflict):
        await store.insert_codespec(spec("a", 3))
    assert (await store.latest_codespec("a")).version == 1


@pytest.mark.parametrize("order", ["name", "newest"])
async def test_list_pages_cover_everything_once(store, order: str) -> None:
    for i, name in enumerate(["c", "a", "b", "d", "e"]):
        await store.insert_codespec(spec(name, 1, minutes=i))
    await store.insert_codespec(spec("a", 2, minutes=10))
    await store.insert_codespec(spec("x_1", 1, minutes=11))
    seen, after = [], None
    while True:
        page = await store.list_codespecs(prefix="", order=order, limit=2, after=after)
        seen += [(c.name, c.version) for c in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    if order == "name":
        assert [n for n, _ in seen] == ["a", "b", "c", "d", "e", "x_1"]
    else:  # newest name first (by first version), ties by name
        assert [n for n, _ in seen] == ["x_1", "e", "d", "b", "a", "c"]
    assert ("a", 2) in seen


async def test_prefix_is_literal(store) -> None:
    for name in ["x_1", "xa1", "y"]:
        await store.insert_codespec(spec(name, 1))
    page = await store.list_codespecs(prefix="x_", order="name", limit=10, after=None)
    assert [c.name for c in page.items] == ["x_1"]


async def test_concurrent_writers_of_one_version_one_wins(store) -> None:
    import asyncio

    await store.insert_codespec(spec("a", 1))
    results = await asyncio.gather(
        *(store.insert_codespec(spec("a", 2, image=f"img{i}")) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))
    assert (await store.latest_codespec("a")).version == 2
