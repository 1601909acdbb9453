"""The Connect stream's plumbing: channel options, outbox, rejected sessions."""

from __future__ import annotations

import time

import grpc
import pytest

from agent import connection
from agent.outbox import Outbox
from agent.runtime import ContainerSpec
from agent.runtime_fake import FakeRuntime
from muster.common.limits import AGENT_MAX_SEND_BYTES, SERVER_MAX_RECEIVE_BYTES
from muster.v1 import agent_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane


async def test_channel_has_keepalive(
    fake_cp: FakeControlPlane, start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, object]] = []
    real = grpc.aio.insecure_channel

    def spy(target: str, options: object = None, **kwargs: object) -> grpc.aio.Channel:
        seen.append(dict(options or ()))  # type: ignore[call-overload]
        return real(target, options=options, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(connection.grpc.aio, "insecure_channel", spy)
    await start_agent()
    await fake_cp.wait_registered()
    assert seen, "the agent opened no channel"
    assert seen[0] == {
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.max_send_message_length": AGENT_MAX_SEND_BYTES,
    }
    assert AGENT_MAX_SEND_BYTES <= SERVER_MAX_RECEIVE_BYTES // 2, "the control plane takes it all"


async def test_heartbeats_do_not_pile_up_in_a_stuck_outbox() -> None:
    outbox = Outbox()
    for _ in range(100):
        outbox.heartbeat()
    status = agent_pb2.ConnectRequest(container_status=agent_pb2.ContainerStatus(run_id=1))
    outbox.put(status)
    outbox.heartbeat()
    assert outbox.qsize() == 2, "one waiting heartbeat stands for all of them"
    before = time.time()
    first = await outbox.get()
    assert first.HasField("heartbeat")
    assert first.heartbeat.time.seconds >= int(before), "stamped when it goes out"
    assert await outbox.get() == status
    outbox.heartbeat()  # the previous one went out: a new one may wait again
    assert outbox.qsize() == 1
    assert (await outbox.get()).HasField("heartbeat")


async def test_rejected_sessions_start_no_log_followers(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    name = "muster-run-50-job-0"
    runtime.add_existing(
        ContainerSpec(run_id=50, role="job", replica=0, name=name, hostname="h", image="i")
    )
    runtime.write_log(name, "stdout", "hello\n")
    fake_cp.reject = (grpc.StatusCode.ALREADY_EXISTS, "node name 'node-a' is in use")
    await start_agent(runtime)
    await fake_cp.wait_for(
        lambda: sum(s.closed and s.register is not None for s in fake_cp.streams) >= 3,
        what="three rejected sessions",
    )
    assert runtime.log_follows == [], "no follower for a session that was never registered"

    fake_cp.reject = None
    stream = await fake_cp.wait_for(
        lambda: next((s for s in fake_cp.streams if s.log_count(name) >= 1), None),
        within=10,
        what="the line of an accepted session",
    )
    assert [e.text for e in stream.log_entries(name)] == ["hello"]
    assert runtime.log_follows == [name]
