"""What control planes, agents and the CLI agree on about leadership
(docs/ha.md): a follower refuses with UNAVAILABLE and names the leader in the
trailing metadata under these keys; several addresses are given comma-separated."""

from __future__ import annotations

from typing import Any

LEADER_API_KEY = "muster-leader-api"
"""Trailing metadata of a follower's refusal: the leader's API address."""
LEADER_AGENT_KEY = "muster-leader-agent"
"""Trailing metadata of a follower's refusal: the leader's agent address."""


def split_addresses(text: str) -> list[str]:
    """`a:1, b:2` -> ['a:1', 'b:2'] (order kept, no blanks or repeats)."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def hint_in(error: Any, key: str) -> str | None:
    """The address a refusal's trailing metadata names under `key`, if any
    (`error`: a grpc RpcError of either API; anything else names nothing)."""
    try:
        metadata: Any = error.trailing_metadata() or ()
        for name, value in metadata:  # (key, value) pairs; grpc's stubs say otherwise
            if name == key and value:
                return value if isinstance(value, str) else value.decode()
    except Exception:
        return None
    return None
