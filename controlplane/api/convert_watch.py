"""WatchRun's `changes_only` responses: what changed in a run since the
version a stream last sent, as a partial Run message.

Why: a watched run changes many times (every container report, every
readiness step), and converting the whole run (targets with their codespec
snapshots, every replica, every event) at each change, for each watcher, was
about 7% of the control plane's CPU under load (performance issue 16). A run
is never changed once handed out (changes are made on copies), so the stream
can keep the version it sent and compare domain objects, cheaply: the
replicas pairwise by dataclass equality (only those that differ are
converted), the events by count (they are only ever appended). The contract
of a partial message is documented on `WatchRunResponse.partial` in
proto/muster/v1/run.proto; whenever a change cannot be said that way (fewer
or reordered replicas, events that are not a continuation, a field that
should never change having changed) the whole run is sent instead.
"""

from __future__ import annotations

from controlplane.api.convert import add_events, add_replica, changing_fields, run_message
from controlplane.core.runs import Run
from muster.v1 import run_pb2 as pb


def _same(a: object, b: object) -> bool:
    return a is b or a == b


def _fixed_fields_same(before: Run, now: Run) -> bool:
    """What a partial message leaves out is unchanged (it never changes after
    creation; checked rather than assumed, identity first: copies share it)."""
    return (
        before.id == now.id
        and _same(before.job, now.job)
        and _same(before.worker, now.worker)
        and before.created_at == now.created_at
        and before.timeout_seconds == now.timeout_seconds
        and before.pull_policy == now.pull_policy
        and before.cluster == now.cluster
        and _same(before.tyger, now.tyger)
        and _same(before.buffers, now.buffers)
    )


def _expressible(before: Run, now: Run) -> bool:
    """Whether the change from `before` to `now` fits a partial message: the
    replicas `before` had are still there in the same places (new ones only
    at the end), and its events are the start of `now`'s."""
    old, new = before.replicas, now.replicas
    if len(new) < len(old) or len(now.events) < len(before.events):
        return False
    for a, b in zip(old, new, strict=False):
        if a.role != b.role or a.index != b.index:
            return False
    # Events are shared between copies, so this is mostly identity checks.
    return now.events[: len(before.events)] == before.events and _fixed_fields_same(before, now)


def partial_run(before: Run, now: Run) -> pb.Run | None:
    """The partial Run message taking a client from `before` to `now`, or None
    when only the whole run says it."""
    if not _expressible(before, now):
        return None
    msg = pb.Run(**changing_fields(now))
    old = before.replicas
    for i, r in enumerate(now.replicas):
        if i >= len(old) or old[i] != r:
            add_replica(msg.replicas, now, r)
    add_events(msg.events, now.events[len(before.events) :])
    return msg


class WatchDeltas:
    """One `changes_only` stream: the first response whole, then each one
    against the version this stream sent last (the watch may skip versions)."""

    def __init__(self) -> None:
        self._sent: Run | None = None

    def response(self, run: Run) -> pb.WatchRunResponse:
        """The response for `run`, the next version to send."""
        before, self._sent = self._sent, run
        partial = None if before is None else partial_run(before, run)
        if partial is None:
            return pb.WatchRunResponse(run=run_message(run))
        return pb.WatchRunResponse(run=partial, partial=True)
