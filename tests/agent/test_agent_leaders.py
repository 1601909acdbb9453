"""The agent's side of leadership: the newest epoch survives a restart and
older epochs are refused; addresses rotate and follow a follower's hint."""

from __future__ import annotations

from pathlib import Path

from agent.leaders import EpochGuard, Targets
from muster.common.leaders import split_addresses


def test_older_epochs_are_refused_and_the_newest_is_kept(tmp_path: Path) -> None:
    guard = EpochGuard(tmp_path)
    assert guard.admit(0, "start_container")  # a control plane without epochs
    assert guard.admit(3, "registered") and guard.admit(3, "start_container")
    assert guard.admit(4, "registered")
    assert not guard.admit(3, "start_container")  # a deposed leader
    restarted = EpochGuard(tmp_path)
    assert restarted.newest == 4 and not restarted.admit(3, "teardown_run")
    assert EpochGuard(None).admit(1, "registered")  # memory only


def test_targets_rotate_and_follow_the_leader() -> None:
    targets = Targets(split_addresses("a:1, b:1,a:1"))
    assert targets.addresses == ["a:1", "b:1"] and targets.current == "a:1"
    targets.failed(None)
    assert targets.current == "b:1"
    targets.failed(None)
    assert targets.current == "a:1"
