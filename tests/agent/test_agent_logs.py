"""Log shipping over the Connect stream, with the fake runtime and the fake control plane."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from agent.logship import LogShipper
from agent.messages import LogBatch, Status
from agent.runtime import ContainerSpec, LogLine
from agent.runtime_fake import FakeRuntime
from muster.v1 import run_pb2
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane, Stream, container_of
from tests.agent.test_agent_protocol import job, worker

RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
STDOUT = run_pb2.LOG_STREAM_STDOUT
STDERR = run_pb2.LOG_STREAM_STDERR
T0 = 1_795_626_489_000_000_000


def lines_of(stream: Stream, name: str) -> list[tuple[int, int, str]]:
    """(stream, sequence, text) of ``name``'s entries, in arrival order."""
    return [(e.stream, e.sequence, e.text) for e in stream.log_entries(name)]


def index_of_status(stream: Stream, name: str, state: int) -> int:
    """Position in ``stream.received`` of ``name``'s first status in ``state``."""
    for i, msg in enumerate(stream.received):
        s = msg.container_status
        if msg.HasField("container_status") and s.container_name == name and s.state == state:
            return i
    raise AssertionError(f"no {state} status for {name}")


def last_log_index(stream: Stream, name: str) -> int:
    """Position in ``stream.received`` of the last batch carrying a line of ``name``."""
    found = -1
    for i, msg in enumerate(stream.received):
        if msg.HasField("log_batch") and any(
            container_of(e) == name for e in msg.log_batch.entries
        ):
            found = i
    return found


async def test_lines_are_shipped_with_identity_time_stream_and_per_stream_sequence(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    name = "muster-run-30-worker-2"
    fake_cp.start_container(**worker(30, 2))
    await fake_cp.wait_status(name, RUNNING, ready=True)

    runtime.write_log(name, "stdout", "out1\nout2\n", time_ns=T0 + 1)
    runtime.write_log(name, "stderr", "err1\n", time_ns=T0 + 2)
    runtime.write_log(name, "stdout", "joined ", time_ns=T0 + 3)  # no newline yet
    runtime.write_log(name, "stdout", "line\nü \udcff\n", time_ns=T0 + 4)
    runtime.write_log(name, "stderr", "no newline at exit", time_ns=T0 + 5)
    runtime.exit(name, 0)
    stream = fake_cp.current
    await fake_cp.wait_for(lambda: stream.log_count(name) == 6, what="6 lines")

    entries = stream.log_entries(name)
    assert {(e.run_id, e.role, e.replica) for e in entries} == {
        (30, run_pb2.REPLICA_ROLE_WORKER, 2)
    }
    got = sorted(
        (e.stream, e.sequence, e.text, e.time.seconds * 10**9 + e.time.nanos) for e in entries
    )
    assert got == [
        (STDOUT, 0, "out1", T0 + 1),
        (STDOUT, 1, "out2", T0 + 1),
        (STDOUT, 2, "joined line", T0 + 3),
        (STDOUT, 3, "ü ?", T0 + 4),  # a lone surrogate cannot go on the wire
        (STDERR, 0, "err1", T0 + 2),
        (STDERR, 1, "no newline at exit", T0 + 5),
    ]
    # Lines follow the container's RUNNING status, never precede it.
    assert index_of_status(stream, name, RUNNING) < stream.received.index(
        next(m for m in stream.received if m.HasField("log_batch"))
    )
    # Exactly once: nothing more arrives (the follower ended at the exit).
    fake_cp.start_container(**job(31))  # a later marker
    await fake_cp.wait_status("muster-run-31-job-0", RUNNING)
    assert stream.log_count(name) == 6


async def test_batches_hold_at_most_500_lines_and_small_output_goes_out_quickly(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    name = "muster-run-32-job-0"
    fake_cp.start_container(**job(32, args=["sleep 100"]))
    await fake_cp.wait_status(name, RUNNING)

    loop = asyncio.get_running_loop()
    began = loop.time()
    runtime.write_log(name, "stdout", "hello\n")
    await fake_cp.wait_for(lambda: stream.log_count(name) == 1, within=2, what="one line")
    assert loop.time() - began < 1.0, "a lone line waits at most ~batch_seconds"

    runtime.write_log(name, "stdout", "".join(f"{i}\n" for i in range(1234)))
    await fake_cp.wait_for(lambda: stream.log_count(name) == 1235, what="1235 lines")
    sizes = [len(b.entries) for b in stream.log_batches]
    assert max(sizes) <= 500 and sum(sizes) == 1235
    assert [seq for _, seq, _ in lines_of(stream, name)] == list(range(1235))
    assert [text for _, _, text in lines_of(stream, name)][1:] == [str(i) for i in range(1234)]


async def test_teardown_sends_every_line_before_removed(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    runtime.log_chunk_lines = 7  # many small reads: the follower is still busy at teardown
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    names = ["muster-run-33-worker-0", "muster-run-33-job-0"]
    fake_cp.start_container(**worker(33, 0))
    fake_cp.start_container(**job(33, args=["sleep 100"]))
    for name in names:
        await fake_cp.wait_status(name, RUNNING, ready=True)
    runtime.write_log(names[0], "stdout", "".join(f"w{i}\n" for i in range(3000)))
    runtime.write_log(names[1], "stdout", "".join(f"j{i}\n" for i in range(2000)))
    runtime.write_log(names[1], "stderr", "last words")  # completed by the stop
    runtime.exit(names[0], 0)  # one finished, one still running

    fake_cp.teardown(33)
    for name in names:
        await fake_cp.wait_status(name, REMOVED)
    assert runtime.containers == {}
    assert len(lines_of(stream, names[0])) == 3000
    assert lines_of(stream, names[1])[-1] == (STDERR, 0, "last words")
    assert len(lines_of(stream, names[1])) == 2001
    for name in names:
        assert last_log_index(stream, name) < index_of_status(stream, name, REMOVED)


async def test_container_removed_outside_the_agent_reports_removed_after_its_lines(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    name = "muster-run-34-job-0"
    fake_cp.start_container(**job(34, args=["sleep 100"]))
    await fake_cp.wait_status(name, RUNNING)
    runtime.write_log(name, "stdout", "before\n")
    await fake_cp.wait_for(lambda: stream.log_count(name) == 1, what="the line")
    runtime.vanish(name)
    await fake_cp.wait_status(name, REMOVED)
    assert last_log_index(stream, name) < index_of_status(stream, name, REMOVED)


async def test_reconnect_reships_from_the_first_line_with_the_same_sequences(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    first = await fake_cp.wait_registered()
    running, done = "muster-run-35-job-0", "muster-run-35-worker-0"
    fake_cp.start_container(**job(35, args=["sleep 100"]))
    fake_cp.start_container(**worker(35, 0))
    await fake_cp.wait_status(running, RUNNING)
    await fake_cp.wait_status(done, RUNNING, ready=True)
    runtime.write_log(running, "stdout", "a\nb\n")
    runtime.write_log(running, "stderr", "e\n")
    runtime.write_log(done, "stdout", "w\n")
    runtime.exit(done, 0)
    await fake_cp.wait_for(lambda: first.log_count() == 4, what="4 lines")
    before = lines_of(first, running)

    port = fake_cp.port
    await fake_cp.stop()
    runtime.write_log(running, "stdout", "c\n")  # written while disconnected
    await fake_cp.start(port)
    second = await fake_cp.wait_registered(count=2, within=10)
    await fake_cp.wait_for(lambda: second.log_count() == 5, what="5 lines re-shipped")

    after = lines_of(second, running)
    assert sorted(after) == sorted([*before, (STDOUT, 2, "c")])
    assert lines_of(second, done) == [(STDOUT, 0, "w")]  # an exited container too
    # Register comes first; the re-shipped lines follow it on the new stream.
    assert second.received[0].HasField("register")
    await eventually(lambda: runtime.log_follows.count(running) == 2, what="one follow per stream")


async def test_logs_of_containers_present_at_startup_are_shipped(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    spec = ContainerSpec(
        run_id=36, role="job", replica=0, name="muster-run-36-job-0", hostname="h", image="i"
    )
    runtime.add_existing(spec, state="exited", exit_code=0)
    runtime.containers[spec.name].logs.extend(
        [LogLine("stdout", T0, "from before"), LogLine("stderr", T0 + 1, "oops")]
    )
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    await fake_cp.wait_for(lambda: stream.log_count() == 2, what="2 lines")
    assert sorted(lines_of(stream, spec.name)) == [(STDOUT, 0, "from before"), (STDERR, 0, "oops")]


async def test_a_flood_arrives_complete_and_in_order_while_heartbeats_keep_flowing(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    name = "muster-run-37-job-0"
    fake_cp.start_container(**job(37, args=["sleep 100"]))
    await fake_cp.wait_status(name, RUNNING)
    total = 100_000
    runtime.write_log(name, "stdout", "".join(f"{i}\n" for i in range(total)))
    runtime.exit(name, 0)
    await fake_cp.wait_for(lambda: stream.log_count() == total, within=30, what="every line")
    entries = stream.log_entries(name)
    assert [e.sequence for e in entries] == list(range(total))
    assert [e.text for e in entries[:3]] == ["0", "1", "2"] and entries[-1].text == str(total - 1)
    await fake_cp.wait_for(lambda: len(stream.heartbeats) >= 2, what="heartbeats")
    arrivals = stream.heartbeat_arrivals
    assert max(b - a for a, b in itertools.pairwise(arrivals)) < 3.0


class CountingRuntime(FakeRuntime):
    """A fake whose ``follow_logs`` counts the chunks taken from it."""

    taken = 0

    async def follow_logs(self, name: str) -> AsyncIterator[list[LogLine]]:
        async for chunk in super().follow_logs(name):
            self.taken += 1
            yield chunk


async def test_a_sink_that_does_not_take_batches_stops_the_reading() -> None:
    """Backpressure: lines wait in the runtime, not in the agent's memory."""
    runtime = CountingRuntime(node_name="node-a")
    runtime.log_chunk_lines = 100
    spec = ContainerSpec(run_id=38, role="job", replica=0, name="c", hostname="h", image="i")
    runtime.add_existing(spec)
    runtime.write_log("c", "stdout", "".join(f"{i}\n" for i in range(100_000)))
    shipper = LogShipper(runtime, batch_lines=500)
    stuck = asyncio.Event()
    sent: list[LogBatch] = []

    async def sink(batch: LogBatch) -> None:
        sent.append(batch)
        await stuck.wait()  # the stream never accepts

    shipper.attach(sink)
    shipper.follow(Status(38, "job", 0, "c", "running"))
    await eventually(lambda: sent, what="a first batch")
    # Everything here runs on the loop without timers (the fake runtime has
    # lines ready at once): once every runnable step has run, the follower
    # either reads on or waits for the sink. Let each task step many times.
    taken = runtime.taken
    for _ in range(100):
        await asyncio.sleep(0)
    assert runtime.taken == taken, "reads stop while the sink is full"
    assert len(sent) == 1 and runtime.taken <= 6
    assert not await shipper.flush(["c"], within=0.1)
    await shipper.close()
