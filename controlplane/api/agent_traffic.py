"""How many messages the agents' streams carry, by kind and direction.

The control plane's cost grows with messages, not with containers: a
container's start, its state changes and its teardown are each a message
unless several share one batch. Counting them (plain integers on the hot
path; Prometheus reads them at a scrape) shows an operator how well batching
works at their scale, and lets benchmarks print messages per container.
"""

from __future__ import annotations

from collections import Counter

from muster.v1 import agent_pb2 as pb


class AgentTraffic:
    """Messages received from and sent to agents, by kind (the oneof's field name)."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.statuses = 0
        """Container states received (one per status, batched or not)."""
        self.starts = 0
        """Container starts sent (one per start, batched or not)."""

    def got(self, message: pb.ConnectRequest, kind: str) -> None:
        """A message of `kind` arrived from an agent."""
        self.received[kind] += 1
        if kind == "container_statuses":
            self.statuses += len(message.container_statuses.statuses)
        elif kind == "container_status":
            self.statuses += 1

    def put(self, message: pb.ConnectResponse) -> None:
        """`message` goes out to an agent."""
        kind = message.WhichOneof("message") or ""
        self.sent[kind] += 1
        if kind == "start_containers":
            self.starts += len(message.start_containers.starts)
        elif kind == "start_container":
            self.starts += 1
