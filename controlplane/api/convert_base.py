"""The conversions every converter builds on: timestamps and the tables
between domain values and protobuf enums. A number a table does not know
is refused (`known`), never read as another value."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.core.codespec import Kind
from controlplane.core.errors import InvalidArgument
from controlplane.core.images import PullPolicy
from controlplane.core.nodes import NetworkMode
from controlplane.core.runs import ContainerState, Role
from controlplane.core.runs import Status as RunStatus
from muster.v1 import codespec_pb2 as pb
from muster.v1 import node_pb2 as node_pb
from muster.v1 import run_pb2 as run_pb

_V = TypeVar("_V")

KIND_TO_PB = {"job": pb.CODESPEC_KIND_JOB, "worker": pb.CODESPEC_KIND_WORKER}
KIND_FROM_PB: dict[int, Kind] = {
    pb.CODESPEC_KIND_UNSPECIFIED: "job",
    pb.CODESPEC_KIND_JOB: "job",
    pb.CODESPEC_KIND_WORKER: "worker",
}


def timestamp(value: datetime | None) -> Timestamp | None:
    """datetime -> Timestamp (None stays None so the field stays unset)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31


def check_timestamp(ts: Timestamp, field: str) -> Timestamp:
    """Reject timestamps outside what protobuf allows (years 1-9999)."""
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "the timestamp is out of range (years 1 to 9999)")
    return ts


def from_timestamp(ts: Timestamp, field: str = "time") -> datetime:
    """Timestamp -> aware UTC datetime (InvalidArgument if out of range)."""
    return check_timestamp(ts, field).ToDatetime(tzinfo=UTC)


STATUS_TO_PB: dict[str, run_pb.RunStatus] = {
    "Pending": run_pb.RUN_STATUS_PENDING,
    "Running": run_pb.RUN_STATUS_RUNNING,
    "Succeeded": run_pb.RUN_STATUS_SUCCEEDED,
    "Failed": run_pb.RUN_STATUS_FAILED,
    "Canceled": run_pb.RUN_STATUS_CANCELED,
}
STATUS_FROM_PB = cast(dict[int, RunStatus], {v: k for k, v in STATUS_TO_PB.items()})
ROLE_TO_PB: dict[str, run_pb.ReplicaRole] = {
    "job": run_pb.REPLICA_ROLE_JOB,
    "worker": run_pb.REPLICA_ROLE_WORKER,
}
ROLE_FROM_PB = cast(dict[int, Role], {v: k for k, v in ROLE_TO_PB.items()})
STATE_TO_PB: dict[str, run_pb.ContainerState] = {
    "pending": run_pb.CONTAINER_STATE_PENDING,
    "pulling": run_pb.CONTAINER_STATE_PULLING,
    "creating": run_pb.CONTAINER_STATE_CREATING,
    "running": run_pb.CONTAINER_STATE_RUNNING,
    "exited": run_pb.CONTAINER_STATE_EXITED,
    "failed": run_pb.CONTAINER_STATE_FAILED,
    "removed": run_pb.CONTAINER_STATE_REMOVED,
}
STATE_FROM_PB = cast(dict[int, ContainerState], {v: k for k, v in STATE_TO_PB.items()})
PULL_POLICY_TO_PB: dict[str, run_pb.PullPolicy] = {
    "missing": run_pb.PULL_POLICY_MISSING,
    "always": run_pb.PULL_POLICY_ALWAYS,
    "never": run_pb.PULL_POLICY_NEVER,
}
PULL_POLICY_FROM_PB = cast(dict[int, PullPolicy], {v: k for k, v in PULL_POLICY_TO_PB.items()})
RESTART_FROM_PB = {
    run_pb.RESTART_POLICY_UNSPECIFIED: False,
    run_pb.RESTART_POLICY_NEVER: False,
    run_pb.RESTART_POLICY_ALWAYS: True,
}


def pull_policy_from_pb(value: int, field: str) -> PullPolicy | None:
    """PullPolicy -> domain; UNSPECIFIED -> None; an unknown number is refused."""
    if value == run_pb.PULL_POLICY_UNSPECIFIED:
        return None
    if value not in PULL_POLICY_FROM_PB:
        raise InvalidArgument(field, f"{value} is not a pull policy (missing, always or never)")
    return PULL_POLICY_FROM_PB[value]


def statuses_from_pb(values: Collection[int]) -> frozenset[RunStatus]:
    """RunStatus values -> domain statuses; an unknown number is refused."""
    statuses = frozenset(STATUS_FROM_PB[s] for s in values if s in STATUS_FROM_PB)
    if len(statuses) != len(set(values)):
        raise InvalidArgument("statuses", "unknown status value")
    return statuses


def known(table: Mapping[Any, _V], value: int, field: str) -> _V:
    """An enum value the control plane knows, or InvalidArgument (never a guess)."""
    if value not in table:
        raise InvalidArgument(field, f"unknown value {value}")
    return table[value]


NODE_STATUS_TO_PB = {
    "Ready": node_pb.NODE_STATUS_READY,
    "NotReady": node_pb.NODE_STATUS_NOT_READY,
    "Lost": node_pb.NODE_STATUS_LOST,
}
MODE_TO_PB = {"bridge": node_pb.NETWORK_MODE_BRIDGE, "host-port": node_pb.NETWORK_MODE_HOST_PORT}
MODE_FROM_PB: dict[int, NetworkMode] = {
    node_pb.NETWORK_MODE_UNSPECIFIED: "bridge",
    node_pb.NETWORK_MODE_BRIDGE: "bridge",
    node_pb.NETWORK_MODE_HOST_PORT: "host-port",
}


STREAM_TO_PB = {"stdout": run_pb.LOG_STREAM_STDOUT, "stderr": run_pb.LOG_STREAM_STDERR}
STREAM_FROM_PB = {v: k for k, v in STREAM_TO_PB.items()}
