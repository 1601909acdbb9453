"""Node records and their liveness rule (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from controlplane.core.capacity import Capacity

NodeStatus = Literal["Ready", "NotReady", "Lost"]
NetworkMode = Literal["bridge", "host-port"]


@dataclass
class Node:
    """A machine whose agent registered at least once."""

    name: str
    pools: tuple[str, ...]
    allocatable: Capacity
    labels: dict[str, str] = field(default_factory=dict)
    advertise_address: str = ""
    agent_version: str = ""
    network_mode: NetworkMode = "bridge"
    network_name: str = ""
    registered_at: datetime | None = None
    last_heartbeat: datetime | None = None
    status: NodeStatus = "Ready"
    instance_id: str = ""  # the connected agent process (not persisted)


@dataclass(frozen=True)
class Liveness:
    """Grace periods: NotReady after `not_ready`, Lost after `lost` without heartbeats."""

    not_ready: timedelta = timedelta(seconds=10)
    lost: timedelta = timedelta(seconds=30)

    def status(self, last_heartbeat: datetime, now: datetime) -> NodeStatus:
        """The status a node has given its last heartbeat."""
        silence = now - last_heartbeat
        if silence >= self.lost:
            return "Lost"
        if silence >= self.not_ready:
            return "NotReady"
        return "Ready"
