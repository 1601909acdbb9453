"""The supervisor's book of the last status it reported for each container.

It records what was said (so a new stream can start with a complete
snapshot and a change is sent only once), sends it on the current stream if
there is one, and keeps the order of events that decides who may report a
container: every task that touches a container stamps it with the next tick,
and a poll that began before that tick is stale for that container.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

from agent.logutil import log
from agent.messages import Status, WireState
from agent.runtime import ContainerInfo, ContainerSpec

Sink = Callable[[Status], None]
"""Sends a container's status on the current stream."""
_log = logging.getLogger(__name__)
_TOUCHES_KEPT = 10_000
"""Touches remembered before the oldest half is dropped (old ones decide nothing)."""


class StatusBook:
    """Last reported status per container name, the stream sink, and the touch order."""

    def __init__(self, on_recorded: Callable[[Status], None]) -> None:
        """``on_recorded`` is told every status recorded (the log shipper follows it)."""
        self._statuses: dict[str, Status] = {}
        self._on_recorded = on_recorded
        self._sink: Sink | None = None
        self._touched: dict[str, int] = {}
        self._ticks = 0

    # -- the statuses ------------------------------------------------------------------

    def get(self, name: str) -> Status | None:
        """The last status of ``name``, ``None`` if it is not known."""
        return self._statuses.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._statuses

    def __iter__(self) -> Iterator[Status]:
        """Every status (a copy of the list: the book may change meanwhile)."""
        return iter(list(self._statuses.values()))

    def names_of(self, run_id: int) -> list[str]:
        """The containers of ``run_id`` known now."""
        return [name for name, status in self._statuses.items() if status.run_id == run_id]

    def snapshot(self) -> list[Status]:
        """Current status of every container present, for Register."""
        return list(self._statuses.values())

    def state_counts(self) -> dict[str, int]:
        """Containers by state, as last recorded."""
        counts: dict[str, int] = {}
        for status in self._statuses.values():
            counts[status.state] = counts.get(status.state, 0) + 1
        return counts

    def record(self, status: Status) -> None:
        """Record ``status`` and send it if it differs from the last one."""
        if self._statuses.get(status.name) == status:
            return
        self._statuses[status.name] = status
        self.send(status)
        self._on_recorded(status)

    def forget(self, name: str) -> None:
        """``name`` is no longer present (or no longer ours)."""
        self._statuses.pop(name, None)

    # -- sending ----------------------------------------------------------------------

    def attach(self, sink: Sink | None) -> None:
        """Send from now on to ``sink`` (``None``: nowhere; changes are still recorded)."""
        self._sink = sink

    def send(self, status: Status) -> None:
        """Log ``status`` and send it on the current stream, if any (not recorded)."""
        log(
            _log,
            logging.INFO,
            "container_status",
            name=status.name,
            state=status.state,
            ready=status.ready,
            exit_code=status.exit_code,
            message=status.message or None,
        )
        if self._sink is not None:
            self._sink(status)

    # -- who spoke last ------------------------------------------------------------------

    def tick(self) -> int:
        """The next tick (a poll notes it when it begins)."""
        self._ticks += 1
        return self._ticks

    def touch(self, name: str) -> None:
        """A start or teardown acted on ``name`` now."""
        self._touched[name] = self.tick()
        if len(self._touched) > _TOUCHES_KEPT:
            for key in list(self._touched)[: _TOUCHES_KEPT // 2]:
                del self._touched[key]

    def touched_since(self, name: str, tick: int) -> bool:
        """Whether ``name`` was touched at or after ``tick``."""
        return self._touched.get(name, 0) >= tick

    # -- teardown -------------------------------------------------------------------------

    def removed(
        self, run_id: int, removed: list[ContainerInfo], remaining: set[str] | None
    ) -> dict[str, Status]:
        """The REMOVED statuses of ``run_id``'s containers that are really gone:
        those no longer listed (``remaining``; ``None``: the list failed) and those
        ``remove_run`` removed that were not listed after it."""
        gone: dict[str, Status] = {}
        if remaining is not None:
            gone = {
                name: _removed(status)
                for name, status in self._statuses.items()
                if status.run_id == run_id and name not in remaining
            }
        for i in removed:
            if (remaining is None or i.name not in remaining) and i.name not in gone:
                prev = self._statuses.get(i.name)
                gone[i.name] = (
                    _removed(prev)
                    if prev is not None
                    else Status(
                        i.run_id,
                        i.role,
                        i.replica,
                        i.name,
                        "removed",
                        exit_code=i.exit_code,
                        cluster_id=i.cluster_id,
                    )
                )
        return gone


def status_of_spec(spec: ContainerSpec, state: WireState) -> Status:
    """The status of the container ``spec`` describes, in ``state``, before it exists."""
    return Status(
        spec.run_id,
        spec.role,
        spec.replica,
        spec.name,
        state,
        generation=spec.generation,
        cluster_id=spec.cluster_id,
    )


def status_of_info(info: ContainerInfo, prev: Status | None, buffer_error: str) -> Status:
    """The status of the container ``info`` describes (its exit code, readiness and
    message are the caller's to add); the image digest is the last known if
    ``info`` lacks it."""
    return Status(
        info.run_id,
        info.role,
        info.replica,
        info.name,
        info.state,
        generation=info.generation,
        image_digest=info.image_digest or (prev.image_digest if prev is not None else ""),
        cluster_id=info.cluster_id,
        buffer_error=buffer_error,
    )


def _removed(status: Status) -> Status:
    return replace(status, state="removed", ready=False, message="", endpoints=())
