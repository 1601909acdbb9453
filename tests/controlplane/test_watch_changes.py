"""WatchRun with `changes_only` (performance issue 16): the first response is
whole, later ones carry only what changed, and a client that merges them
(muster_cli.watching.apply_watch) holds exactly the run a plain watch shows.
Over real gRPC with hand-driven agents (and the CLI's own watch loop), then
the delta and the merge alone."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from controlplane.api.convert import run_to_pb
from controlplane.api.convert_watch import WatchDeltas, partial_run
from controlplane.core import runs as lifecycle
from controlplane.core.codespec import Codespec
from controlplane.core.runs import Event, Target
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from muster_cli.watching import apply_watch, watch_run
from tests.controlplane.test_images_grpc import agent, codespecs, get_run, status, until_run
from tests.waiting import until

PULLING, RUNNING = rpb.CONTAINER_STATE_PULLING, rpb.CONTAINER_STATE_RUNNING
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Watcher:
    """One WatchRun stream read in the background: every reply, and the run
    the client holds after each (merged when partial)."""

    def __init__(self, ch: grpc.aio.Channel, run_id: int, changes_only: bool) -> None:
        self.replies: list[rpb.WatchRunResponse] = []
        self.runs: list[rpb.Run] = []
        request = rpb.WatchRunRequest(run_id=run_id, changes_only=changes_only)
        self.task = asyncio.create_task(self._read(rgrpc.RunServiceStub(ch), request))

    async def _read(self, stub: rgrpc.RunServiceStub, request: rpb.WatchRunRequest) -> None:
        held: rpb.Run | None = None
        async for reply in stub.WatchRun(request):
            self.replies.append(reply)
            held = apply_watch(held, reply)
            snapshot = rpb.Run()
            snapshot.CopyFrom(held)
            self.runs.append(snapshot)


class CliWatcher:
    """The CLI's own loop (muster_cli.watching.watch_run, blocking gRPC) in a
    thread: the run it holds after each response."""

    def __init__(self, port: int, run_id: int) -> None:
        self.runs: list[rpb.Run] = []
        self.thread = threading.Thread(target=self._read, args=(port, run_id), daemon=True)
        self.thread.start()

    def _read(self, port: int, run_id: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for held in watch_run(rgrpc.RunServiceStub(channel), run_id):
                snapshot = rpb.Run()
                snapshot.CopyFrom(held)
                self.runs.append(snapshot)


async def settle(
    ch: grpc.aio.Channel, run_id: int, watchers: list[Watcher | CliWatcher]
) -> rpb.Run:
    """Until every watcher holds the run GetRun returns (proto equality, so
    the same ETag and all the rest). Runs are compared at these points rather
    than wherever two watchers saw one ETag: the ETag covers only status,
    reason, times, running count and tags (replicas change under one ETag), and
    a watch may skip versions, so two watchers may last have seen different
    versions with the same ETag."""
    seen: list[rpb.Run] = []

    async def same() -> rpb.Run | None:
        seen.append(await get_run(ch, run_id))
        return seen[-1] if all(w.runs and w.runs[-1] == seen[-1] for w in watchers) else None

    def what() -> str:
        return f"watchers to hold {seen[-1] if seen else None}, they hold " + " / ".join(
            str(w.runs[-1] if w.runs else None) for w in watchers
        )

    return await until(same, 10, what)


async def create(ch: grpc.aio.Channel) -> rpb.Run:
    message = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        worker=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="w"), node_pool="gpu", replicas=3),
        tags={"team": "a"},
    )
    return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=message))).run


async def test_merged_partial_responses_equal_the_whole_run_at_every_step(plane, ch) -> None:
    await codespecs(ch, "img", "img")
    gpu, cpu = await agent(ch, "n-gpu", "gpu"), await agent(ch, "n-cpu", "cpu")
    run = await create(ch)
    whole, changes = Watcher(ch, run.id, False), Watcher(ch, run.id, True)
    cli = CliWatcher(plane.port, run.id)
    watchers: list[Watcher | CliWatcher] = [whole, changes, cli]
    steps = [await settle(ch, run.id, watchers)]

    workers = [(await gpu.next("start_container")).start_container for _ in range(3)]
    for w in workers:
        gpu.send(container_status=status(w, PULLING))
        await until_run(ch, run.id, lambda r, i=w.replica: r.replicas[i].state == PULLING, "pull")
        steps.append(await settle(ch, run.id, watchers))
        gpu.send(container_status=status(w, RUNNING, ready=True))
        await until_run(ch, run.id, lambda r, i=w.replica: r.replicas[i].ready, "ready")
        steps.append(await settle(ch, run.id, watchers))
    retagged = await rgrpc.RunServiceStub(ch).UpdateRunTags(
        rpb.UpdateRunTagsRequest(run_id=run.id, clear_tags=True)
    )
    assert dict(retagged.run.tags) == {}
    steps.append(await settle(ch, run.id, watchers))  # the tags' clearing reached the merged run

    job = (await cpu.next("start_container")).start_container
    cpu.send(container_status=status(job, RUNNING))
    await until_run(ch, run.id, lambda r: r.running_count == 1, "job running")
    steps.append(await settle(ch, run.id, watchers))
    cpu.send(container_status=status(job, rpb.CONTAINER_STATE_EXITED, exit_code=0))
    await asyncio.wait_for(asyncio.gather(whole.task, changes.task), 10)  # all end with the run
    await asyncio.to_thread(cli.thread.join, 10)
    assert not cli.thread.is_alive()

    final = await get_run(ch, run.id)
    assert final.status == rpb.RUN_STATUS_SUCCEEDED and final.HasField("finished_at")
    assert whole.runs[-1] == final and changes.runs[-1] == final and cli.runs[-1] == final
    assert len({s.etag for s in steps}) >= 4, "the steps went through several ETags"
    assert not any(r.partial for r in whole.replies), "without changes_only, always whole"
    assert not changes.replies[0].partial and changes.replies[0].run.HasField("job")
    partials = [r for r in changes.replies if r.partial]
    assert partials, "later responses of a changes_only stream are partial"
    # Partial responses are smaller: some carry one replica of four, none the fixed fields.
    assert any(len(r.run.replicas) < len(final.replicas) for r in partials)
    for reply in partials:
        for name in ("job", "worker", "created_at", "timeout_seconds"):
            assert not reply.run.HasField(name), (name, reply)
        assert not reply.run.buffers and not reply.run.cluster and not reply.run.pull_policy
    for fake in (gpu, cpu):
        fake.outbox.put_nowait(None)


# -- the delta and the merge, without a server ----------------------------------


def make_run() -> lifecycle.Run:
    job = Target(Codespec(name="j", image="img"), "j")
    worker = Target(Codespec(name="w", image="img", kind="worker"), "w", replicas=3)
    return lifecycle.new_run(7, job, worker, T0, tags={"team": "a"})


def changed(before: lifecycle.Run) -> lifecycle.Run:
    """Worker 1 placed and running, an event appended, the tags cleared."""
    after = lifecycle.clone(before)
    after.replicas[1].node, after.replicas[1].state = "n1", "running"
    after.tags = {}
    after.events.append(Event(T0 + timedelta(seconds=1), "worker 1 running on n1"))
    return after


def test_the_delta_carries_changed_replicas_and_new_events_only() -> None:
    before = make_run()
    after = changed(before)
    part = partial_run(before, after)
    assert part is not None
    whole = run_to_pb(after)
    assert list(part.replicas) == [whole.replicas[1]]  # unchanged replicas are absent
    assert [e.message for e in part.events] == ["worker 1 running on n1"]  # appended only
    assert (part.id, part.status, part.status_reason, part.etag) == (
        whole.id,
        whole.status,
        whole.status_reason,
        whole.etag,
    )
    assert dict(part.tags) == {} and not part.HasField("started_at")
    for name in ("job", "worker", "created_at", "timeout_seconds"):
        assert not part.HasField(name), name

    nothing = partial_run(after, lifecycle.clone(after))
    assert nothing is not None and not nothing.replicas and not nothing.events


def test_what_a_delta_cannot_say_is_sent_whole() -> None:
    before = make_run()
    shrunk = lifecycle.clone(before)
    shrunk.replicas.pop()
    assert partial_run(before, shrunk) is None
    reordered = lifecycle.clone(before)
    reordered.replicas.reverse()
    assert partial_run(before, reordered) is None
    rewritten = lifecycle.clone(before)
    rewritten.events = [Event(T0, "another history")]
    assert partial_run(before, rewritten) is None

    deltas = WatchDeltas()
    first, second = deltas.response(before), deltas.response(changed(before))
    assert not first.partial and first.run == run_to_pb(before)
    assert second.partial and len(second.run.replicas) == 1
    third = deltas.response(shrunk)  # against the last version sent: fewer replicas
    assert not third.partial and third.run == run_to_pb(shrunk)


def test_merging_a_partial_response_gives_the_whole_run() -> None:
    before = make_run()
    after = changed(before)
    held = apply_watch(None, rpb.WatchRunResponse(run=run_to_pb(before)))
    part = partial_run(before, after)
    assert part is not None
    merged = apply_watch(held, rpb.WatchRunResponse(run=part, partial=True))
    assert merged == run_to_pb(after)
    assert merged.HasField("job") and merged.HasField("worker")  # kept from the whole one


def test_the_merge_adds_new_replicas_clears_times_and_replaces_on_whole() -> None:
    held = rpb.Run(id=1, status=rpb.RUN_STATUS_RUNNING, tags={"a": "b"}, etag="e1")
    held.started_at.GetCurrentTime()
    held.replicas.add(role=rpb.REPLICA_ROLE_JOB, index=0, state=RUNNING)
    held.events.add(message="created")
    part = rpb.Run(id=1, status=rpb.RUN_STATUS_PENDING, etag="e2")
    part.replicas.add(role=rpb.REPLICA_ROLE_JOB, index=1, state=PULLING)
    part.events.add(message="job 1 pulling")
    merged = apply_watch(held, rpb.WatchRunResponse(run=part, partial=True))
    assert (merged.status, merged.etag, dict(merged.tags)) == (rpb.RUN_STATUS_PENDING, "e2", {})
    assert not merged.HasField("started_at")
    assert [(r.index, r.state) for r in merged.replicas] == [(0, RUNNING), (1, PULLING)]
    assert [e.message for e in merged.events] == ["created", "job 1 pulling"]

    fresh = rpb.Run(id=1, status=rpb.RUN_STATUS_SUCCEEDED)
    assert apply_watch(merged, rpb.WatchRunResponse(run=fresh)) == fresh
    with pytest.raises(ValueError, match="before a whole one"):
        apply_watch(None, rpb.WatchRunResponse(run=part, partial=True))
