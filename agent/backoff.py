"""The agent's one backoff rule: doubling pauses, from a first one up to a longest.

Every loop in the agent that retries after a failure (or polls less often
while nothing happens) takes its pauses from :func:`backoff`. Loops that many
agents run against one server at once (reconnecting to the control plane)
pass a random source: the pause is then drawn from its upper half, so that
agents cut off together do not come back together.
"""

from __future__ import annotations

import random


def backoff(
    first: float, longest: float, failures: int, jitter: random.Random | None = None
) -> float:
    """The pause after ``failures`` failures in a row (1: ``first``), doubling up to
    ``longest``; with ``jitter``, that pause times a draw from U(0.5, 1)."""
    pause = min(longest, first * 2 ** min(max(failures, 1) - 1, 30))
    return pause if jitter is None else pause * jitter.uniform(0.5, 1.0)
