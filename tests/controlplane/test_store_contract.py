"""One contract, every Store backend (SQLite file, SQLite in memory, dict,
PostgreSQL): the suites are test_store_contract_*.py beside this file, one per
concern, all on the `store` fixture of store_contract_support.py. This file
checks that together they cover the whole Store protocol."""

from __future__ import annotations

from pathlib import Path


def test_every_store_method_has_a_contract_test() -> None:
    """Each method of the Store protocol is called by a contract suite, so
    every backend is held to all of it."""
    from controlplane.store.base import Store

    suites = sorted(Path(__file__).parent.glob("test_store_contract_*.py"))
    source = "".join(suite.read_text() for suite in suites)
    methods = [name for name in vars(Store) if not name.startswith("_")]
    missing = [m for m in methods if f"store.{m}(" not in source and m != "close"]
    assert len(suites) >= 8 and len(methods) > 40 and missing == []
