"""Node records, their liveness rule (docs/contract.md §3) and maintenance: cordon and drain.

Maintenance is an admin's decision kept on the node and persisted with it:

- cordoned: no new placement on the node; what runs there keeps running;
- draining: cordoned, and waiting for the runs with replicas there to end;
  at `drain_deadline` (if any) the runs still there are canceled;
- drained: a drain ended with no run holding a replica there; the node stays
  cordoned (`drained_at` says when) until it is uncordoned.

Cordon is temporary, so admission still counts cordoned nodes: a run whose
pool has only cordoned nodes is admitted and waits Pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from controlplane.core.capacity import Capacity
from controlplane.core.codespec import NAME_RE
from controlplane.core.errors import InvalidArgument

NodeStatus = Literal["Ready", "NotReady", "Lost"]
NetworkMode = Literal["bridge", "host-port"]


@dataclass
class Node:
    """A machine whose agent registered at least once."""

    name: str
    pools: tuple[str, ...]
    allocatable: Capacity
    labels: dict[str, str] = field(default_factory=dict)
    gpu_devices: tuple[str, ...] = ()  # CDI names; allocatable.gpus is their number
    advertise_address: str = ""
    agent_version: str = ""
    network_mode: NetworkMode = "bridge"
    network_name: str = ""
    registered_at: datetime | None = None
    last_heartbeat: datetime | None = None
    status: NodeStatus = "Ready"
    instance_id: str = ""  # the connected agent process (not persisted)
    cordoned: bool = False  # no new placements (also while draining and once drained)
    draining: bool = False  # waiting for the runs with replicas here to end
    drain_deadline: datetime | None = None  # while draining: when what is left is canceled
    drained_at: datetime | None = None  # when the last drain completed

    @property
    def maintenance(self) -> str:
        """What `node list` adds to the status: Draining, Drained, Cordoned or ''."""
        if self.draining:
            return "Draining"
        if self.cordoned:
            return "Drained" if self.drained_at else "Cordoned"
        return ""


MAX_LABELS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 256
MAX_POOLS = 32
MAX_GPU_DEVICES = 256
MAX_TEXT = 255
"""Bounds on what an agent may say about its node: a node record is shown whole
by ListNodes and stored whole, so one oversized Register must not make every
later ListNodes reply exceed the message limit."""


def check_registration(node: Node) -> None:
    """Refuse a registration that names the node badly or is too large to keep."""
    if not NAME_RE.match(node.name):
        raise InvalidArgument("node_name", f"'{node.name[:80]}' is not a valid node name")
    _at_most("pools", len(node.pools), MAX_POOLS)
    for pool in node.pools:
        if not NAME_RE.match(pool):
            raise InvalidArgument("pools", f"'{pool[:80]}' is not a valid pool name")
    _at_most("labels", len(node.labels), MAX_LABELS)
    for key, value in node.labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            raise InvalidArgument("labels", f"a label key has 1-{MAX_LABEL_KEY} characters")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"labels.{key}", f"a label value has at most {MAX_LABEL_VALUE} characters"
            )
    _at_most("gpu_devices", len(node.gpu_devices), MAX_GPU_DEVICES)
    texts = {
        "gpu_devices": max(node.gpu_devices, key=len, default=""),
        "advertise_address": node.advertise_address,
        "agent_version": node.agent_version,
        "network_name": node.network_name,
        "instance_id": node.instance_id,
    }
    for name, text in texts.items():
        if len(text) > MAX_TEXT:
            raise InvalidArgument(name, f"at most {MAX_TEXT} characters")


def _at_most(name: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidArgument(name, f"at most {limit} entries, not {count}")


@dataclass(frozen=True)
class Liveness:
    """Grace periods: NotReady after `not_ready`, Lost after `lost` without heartbeats."""

    not_ready: timedelta = timedelta(seconds=10)
    lost: timedelta = timedelta(seconds=30)

    def status(self, last_heartbeat: datetime, now: datetime) -> NodeStatus:
        """The status a node has given its last heartbeat."""
        return self.status_after(now - last_heartbeat)

    def status_after(self, silence: timedelta) -> NodeStatus:
        """The status of a node that has been silent this long."""
        if silence >= self.lost:
            return "Lost"
        if silence >= self.not_ready:
            return "NotReady"
        return "Ready"


DrainStep = Literal["wait", "complete", "deadline"]


def cordon(node: Node) -> Node:
    """No new placements; a drain in progress goes on."""
    return replace(node, cordoned=True)


def uncordon(node: Node) -> Node:
    """Schedulable again; ends a drain (nothing more is canceled)."""
    return replace(node, cordoned=False, draining=False, drain_deadline=None, drained_at=None)


def drain(node: Node, now: datetime, deadline: timedelta | None) -> Node:
    """Cordon and wait for the node's runs to end; after `deadline` (None:
    never) cancel what is left. Draining again replaces the deadline."""
    return replace(
        node,
        cordoned=True,
        draining=True,
        drain_deadline=now + deadline if deadline is not None else None,
        drained_at=None,
    )


def drain_step(node: Node, replicas_here: int, now: datetime) -> DrainStep | None:
    """What a draining node needs now, given how many replicas of active runs
    are placed on it: None (not draining), "complete" (nothing left),
    "deadline" (cancel what is left) or "wait"."""
    if not node.draining:
        return None
    if replicas_here == 0:
        return "complete"
    if node.drain_deadline is not None and now >= node.drain_deadline:
        return "deadline"
    return "wait"


def drained(node: Node, now: datetime) -> Node:
    """The drain is complete: still cordoned, no longer draining."""
    return replace(node, cordoned=True, draining=False, drain_deadline=None, drained_at=now)


def keep_maintenance(new: Node, known: Node | None) -> Node:
    """An agent's re-registration describes the machine, not the admin's
    decisions: carry cordon and drain state over from the known node."""
    if known is None:
        return new
    return replace(
        new,
        cordoned=known.cordoned,
        draining=known.draining,
        drain_deadline=known.drain_deadline,
        drained_at=known.drained_at,
    )
