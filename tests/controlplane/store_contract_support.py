"""What the Store contract suites share: the `store` fixture, one parameter
per backend (SQLite file, SQLite in memory, dict, PostgreSQL), and builders of
the records they store. Each test_store_contract_*.py imports the fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.core.codespec import Codespec
from controlplane.store.factory import open_store
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "memory", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    if request.param == "sqlite-file":
        s = await SqliteStore.open(tmp_path / "sub" / "db.sqlite")
    elif request.param == "sqlite-memory":
        s = await SqliteStore.open(":memory:")
    elif request.param == "postgresql":  # the session's server, a database of its own
        s = await open_store(request.getfixturevalue("postgres_url"))
    else:
        s = MemoryStore()
    yield s
    await s.close()


def spec(name: str, version: int, minutes: int = 0, image: str = "img") -> Codespec:
    return Codespec(
        name=name,
        image=image,
        version=version,
        created_at=T0 + timedelta(minutes=minutes),
        env={"A": "1"},
    )


async def finished_run(store, minutes: int, tags: dict[str, str] | None = None, request_id=""):
    """A run that finished `minutes` after T0."""
    from controlplane.core import runs as lifecycle
    from tests.controlplane.test_runs_state import make_run

    run = make_run()
    run.tags = dict(tags or {})
    run = await store.insert_run(run, request_id)
    lifecycle.cancel(run, T0 + timedelta(minutes=minutes))
    await store.save_run(run)
    return run


def lines(run_id: int, count: int, text: str = "x" * 100, start: int = 0) -> list:
    from controlplane.core.logs import LogLine

    return [
        LogLine(run_id, "job", 0, "stdout", i, 1_000_000 * (i + 1), text)
        for i in range(start, start + count)
    ]


def run_at(minutes: int, tags: dict[str, str] | None = None):
    """A new (Pending) run created `minutes` after T0."""
    from tests.controlplane.test_runs_state import make_run

    run = make_run()
    run.created_at = T0 + timedelta(minutes=minutes)
    run.tags = dict(tags or {})
    return run


def node(name: str, **kw):
    from controlplane.core.capacity import Capacity
    from controlplane.core.nodes import Node

    return Node(name, ("cpu",), Capacity(4000, 2**33, 0), **kw)
