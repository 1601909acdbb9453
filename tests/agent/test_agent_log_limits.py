"""Logs of any size within gRPC's limits, and liveness before logs (fake runtime,
fake control plane): long lines in parts, byte-capped batches, the priority
outbox and the acknowledged log window."""

from __future__ import annotations

import asyncio

from agent.logship import LogShipper
from agent.messages import LogBatch, Status
from agent.outbox import LogWindow, Outbox
from agent.runtime import ContainerSpec
from agent.runtime_fake import FakeRuntime
from muster.common.limits import LOG_BATCH_BYTES, LOG_PART_BYTES
from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane, Stream
from tests.agent.test_agent_logs import index_of_status, last_log_index
from tests.agent.test_agent_protocol import job

RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED


def whole_lines(stream: Stream, name: str) -> list[str]:
    """``name``'s stdout with parts joined into lines."""
    lines, begun = [], ""
    entries = [e for e in stream.log_entries(name) if e.stream == run_pb2.LOG_STREAM_STDOUT]
    assert [e.sequence for e in entries] == list(range(len(entries)))
    for e in entries:
        begun += e.text
        if not e.partial:
            lines.append(begun)
            begun = ""
    assert begun == "", "the last part of a line is never partial"
    return lines


async def test_a_5mb_line_goes_out_in_parts_and_batches_stay_under_1_mib(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    fake_cp.log_window = 8
    agent = await start_agent()
    runtime = agent.runtime
    stream = await fake_cp.wait_registered()
    name = "muster-run-60-job-0"
    fake_cp.start_container(**job(60, args=["sleep 100"]))
    await fake_cp.wait_status(name, RUNNING)
    huge = ("0123456789abcdé€😀" * 300_000)[: 4 * 2**20]  # more than 5 MiB of UTF-8
    assert len(huge.encode()) > 5 * 2**20
    runtime.write_log(name, "stdout", huge + "\nafter\n")  # type: ignore[attr-defined]
    runtime.exit(name, 0)  # type: ignore[attr-defined]
    await fake_cp.wait_for(
        lambda: (
            stream.log_entries(name)
            and not stream.log_entries(name)[-1].partial
            and stream.log_entries(name)[-1].text == "after"
        ),
        within=20,
        what="the line after the 5 MB line",
    )
    assert whole_lines(stream, name) == [huge, "after"]
    entries = stream.log_entries(name)
    assert max(len(e.text.encode()) for e in entries) <= LOG_PART_BYTES
    assert len(entries) > 5 * 2**20 // LOG_PART_BYTES
    assert len({(e.time.seconds, e.time.nanos) for e in entries[:-1]}) == 1, "the line's time"
    assert max(b.ByteSize() for b in stream.log_batches) <= LOG_BATCH_BYTES
    assert [b.batch_id for b in stream.log_batches] == list(range(1, len(stream.log_batches) + 1))


async def test_heartbeats_and_states_overtake_logs_and_removed_waits_for_the_last_ack(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    fake_cp.log_window = 2
    fake_cp.hold_acks = True  # the control plane is busy storing
    agent = await start_agent()
    runtime = agent.runtime
    stream = await fake_cp.wait_registered()
    flood = "muster-run-61-job-0"
    fake_cp.start_container(**job(61, args=["sleep 100"]))
    await fake_cp.wait_status(flood, RUNNING)
    total = 20_000
    runtime.write_log(flood, "stdout", "".join(f"{i:0999d}\n" for i in range(total)))  # type: ignore[attr-defined]
    await fake_cp.wait_for(lambda: len(stream.log_batches) == 2, what="a window of batches")
    beats = len(stream.heartbeats)
    await fake_cp.wait_for(
        lambda: len(stream.heartbeats) >= beats + 2, within=5, what="heartbeats during the flood"
    )
    other = "muster-run-62-job-0"
    fake_cp.start_container(**job(62))
    await fake_cp.wait_status(other, RUNNING)
    runtime.exit(flood, 0)  # type: ignore[attr-defined]
    await fake_cp.wait_status(flood, EXITED)
    fake_cp.teardown(61)
    await asyncio.sleep(0.5)
    assert len(stream.log_batches) == 2, "no more than the window without acknowledgements"
    assert not any(s.container_name == flood and s.state == REMOVED for s in stream.statuses), (
        "REMOVED only once every line is stored"
    )

    fake_cp.hold_acks = False
    fake_cp.release_acks()
    await fake_cp.wait_status(flood, REMOVED, within=20)
    assert whole_lines(stream, flood) == [f"{i:0999d}" for i in range(total)]
    assert last_log_index(stream, flood) < index_of_status(stream, flood, REMOVED)
    assert max(b.ByteSize() for b in stream.log_batches) <= LOG_BATCH_BYTES


async def test_the_outbox_sends_control_messages_before_waiting_log_batches() -> None:
    outbox = Outbox()
    logs = [agent_pb2.ConnectRequest(log_batch=agent_pb2.LogBatch(batch_id=i)) for i in (1, 2)]
    status = agent_pb2.ConnectRequest(container_status=agent_pb2.ContainerStatus(run_id=7))
    outbox.put(logs[0])
    outbox.put(logs[1])
    outbox.put(status)
    outbox.heartbeat()
    assert outbox.qsize() == 4
    assert await outbox.get() == status
    assert (await outbox.get()).HasField("heartbeat")
    assert [await outbox.get(), await outbox.get()] == logs
    getter = asyncio.ensure_future(outbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    outbox.put(status)
    assert await asyncio.wait_for(getter, 1) == status


async def test_the_log_window_numbers_batches_and_frees_a_slot_per_acknowledgement() -> None:
    outbox = Outbox()
    window = LogWindow(outbox, size=8)
    window.use_acks(2)
    first = await window.send(agent_pb2.LogBatch())
    second = await window.send(agent_pb2.LogBatch())
    third = asyncio.ensure_future(window.send(agent_pb2.LogBatch()))
    await asyncio.sleep(0.05)
    assert not third.done(), "a full window waits"
    assert first is not None and second is not None
    window.acked(2)  # acknowledgements are cumulative
    assert first.done() and second.done()
    stored = await asyncio.wait_for(third, 1)
    assert [(await outbox.get()).log_batch.batch_id for _ in range(3)] == [1, 2, 3]
    window.close()  # the stream ended: nobody will acknowledge
    assert stored is not None and stored.cancelled()

    plain = LogWindow(Outbox(), size=1)  # a control plane without acknowledgements
    queued = await plain.send(agent_pb2.LogBatch())
    blocked = asyncio.ensure_future(plain.send(agent_pb2.LogBatch()))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert not queued.done(), "in the outbox is not sent: status messages overtake it"
    plain.sent()  # handed to gRPC
    assert queued.done() and not queued.cancelled()
    last = await asyncio.wait_for(blocked, 1)
    plain.close()
    assert last.cancelled(), "never handed to gRPC"


async def test_a_flush_waits_as_long_as_batches_keep_going_out() -> None:
    runtime = FakeRuntime(node_name="node-a")
    spec = ContainerSpec(run_id=63, role="job", replica=0, name="c", hostname="h", image="i")
    runtime.add_existing(spec, state="exited", exit_code=0)
    runtime.write_log("c", "stdout", "".join(f"{i}\n" for i in range(2_000)))
    shipper = LogShipper(runtime, batch_lines=100)
    sent: list[LogBatch] = []

    async def slow_sink(batch: LogBatch) -> None:
        await asyncio.sleep(0.1)  # 20 batches: 2 s in all, far beyond `within`
        sent.append(batch)

    shipper.attach(slow_sink)
    shipper.follow(Status(63, "job", 0, "c", "exited"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await shipper.flush(["c"], within=0.5)
    assert loop.time() - began > 1.5
    assert sum(len(b.entries) for b in sent) == 2_000
    await shipper.close()
