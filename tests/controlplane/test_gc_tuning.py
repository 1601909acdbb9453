"""The control plane's and the agent's commands set the garbage collector's
thresholds before they serve (young collections less often, full ones rarely:
see muster/common/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent import __main__ as agent_main
from controlplane import __main__ as cp_main
from muster.common.gc_tuning import GC_THRESHOLDS


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_the_command_tunes_the_collector_before_serving(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    seen: list[tuple[int, int, int]] = []

    def serve_nothing(coro) -> None:  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        coro.close()

    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(cp_main, "_run_or_exit", serve_nothing)
    cp_main.main(["--insecure", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "cp.db")])
    assert seen == [GC_THRESHOLDS]
    young, _, old = GC_THRESHOLDS
    assert young > 700 and old > 10, "fewer young and full collections than Python's defaults"


def test_the_agent_command_tunes_the_collector_too(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []

    def run_nothing(coro) -> None:  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold())
        coro.close()

    gc.set_threshold(700, 10, 10)
    monkeypatch.setattr(agent_main.asyncio, "run", run_nothing)
    assert agent_main.main(["--insecure", "--server", "127.0.0.1:1", "--node-name", "n"]) == 0
    assert seen == [GC_THRESHOLDS]
