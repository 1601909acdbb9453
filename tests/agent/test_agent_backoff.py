"""The agent's one backoff rule (agent/backoff.py)."""

from __future__ import annotations

import random

from agent.backoff import backoff
from agent.connection import Backoff


def test_pauses_double_from_the_first_up_to_the_longest() -> None:
    assert [backoff(0.1, 1.0, n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff(0.1, 1.0, 0) == 0.1, "no failure yet counts as the first"
    assert backoff(0.1, 1.0, 10_000) == 1.0, "no overflow however long it fails"


def test_jitter_draws_from_the_upper_half_of_the_pause() -> None:
    rng = random.Random(7)
    pauses = [backoff(0.2, 5.0, 8, rng) for _ in range(200)]
    assert all(2.5 <= p <= 5.0 for p in pauses)
    assert len(set(pauses)) > 1


def test_the_reconnect_backoff_is_the_same_rule_with_jitter() -> None:
    """What the connection's Backoff gives for attempt n (0-based) is this rule
    after n + 1 failures, with the same random draws."""
    settings = Backoff(initial=0.2, maximum=5.0)
    for attempt in range(12):
        ours, theirs = random.Random(attempt), random.Random(attempt)
        assert backoff(0.2, 5.0, attempt + 1, ours) == settings.delay(attempt, theirs)
