"""The agent's one backoff rule: doubling pauses, from a first one up to a longest."""

from __future__ import annotations


def backoff(first: float, longest: float, failures: int) -> float:
    """The pause after ``failures`` failures in a row (1: ``first``), doubling up to ``longest``."""
    return min(longest, first * 2 ** min(max(failures, 1) - 1, 30))
