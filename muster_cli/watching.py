"""Following a run with WatchRun's `changes_only`: the control plane sends the
whole run once, then only what changed (`WatchRunResponse.partial`, documented
in proto/muster/v1/run.proto); the CLI keeps the whole run up to date."""

from __future__ import annotations

from collections.abc import Iterator

from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc


def apply_watch(held: pb.Run | None, reply: pb.WatchRunResponse) -> pb.Run:
    """The whole run after `reply`: a whole response replaces `held`; a partial
    one is merged into `held` (changed in place and returned): the scalars it
    always carries are copied, its replicas replace those with the same role
    and index (or are added), its events are appended, the rest is kept."""
    if not reply.partial:
        return reply.run
    if held is None:
        raise ValueError("a partial WatchRun response came before a whole one")
    part = reply.run
    held.id, held.status, held.status_reason = part.id, part.status, part.status_reason
    held.running_count, held.etag = part.running_count, part.etag
    for name in ("started_at", "finished_at"):
        if part.HasField(name):
            getattr(held, name).CopyFrom(getattr(part, name))
        else:
            held.ClearField(name)
    held.tags.clear()
    held.tags.update(part.tags)
    if part.replicas:
        where = {(r.role, r.index): i for i, r in enumerate(held.replicas)}
        for r in part.replicas:
            i = where.get((r.role, r.index))
            if i is None:
                held.replicas.add().CopyFrom(r)
            else:
                held.replicas[i].CopyFrom(r)
    held.events.extend(part.events)
    return held


def watch_run(stub: pb_grpc.RunServiceStub, run_id: int) -> Iterator[pb.Run]:
    """One WatchRun stream: the whole run after each change (the same message,
    updated in place, from the second response on)."""
    held: pb.Run | None = None
    for reply in stub.WatchRun(pb.WatchRunRequest(run_id=run_id, changes_only=True)):
        held = apply_watch(held, reply)
        yield held
