"""The agent's Connect protocol, against a fake control plane and the fake runtime."""

from __future__ import annotations

import logging

import pytest

from agent.runtime import ContainerSpec
from agent.runtime_fake import FakeRuntime
from muster.v1 import agent_pb2, node_pb2, run_pb2
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane

CREATING = run_pb2.CONTAINER_STATE_CREATING
RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
FAILED = run_pb2.CONTAINER_STATE_FAILED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
JOB = run_pb2.REPLICA_ROLE_JOB
WORKER = run_pb2.REPLICA_ROLE_WORKER


def worker(run_id: int, i: int, **extra: object) -> dict[str, object]:
    """StartContainer fields for worker ``i`` with endpoints http:8080 and grpc:9090."""
    fields: dict[str, object] = {
        "run_id": run_id,
        "role": WORKER,
        "replica": i,
        "container_name": f"muster-run-{run_id}-worker-{i}",
        "hostname": f"run-{run_id}-worker-{i}",
        "image": "localhost/muster-python:latest",
        "args": ["python3", "-m", "http.server", "8080"],
        "endpoints": [
            agent_pb2.EndpointPort(name="http", port=8080),
            agent_pb2.EndpointPort(name="grpc", port=9090),
        ],
    }
    fields.update(extra)
    return fields


def job(run_id: int, **extra: object) -> dict[str, object]:
    """StartContainer fields for job replica 0."""
    fields: dict[str, object] = {
        "run_id": run_id,
        "role": JOB,
        "replica": 0,
        "container_name": f"muster-run-{run_id}-job-0",
        "hostname": f"run-{run_id}-job-0",
        "image": "localhost/muster-busybox:latest",
        "command": ["sh", "-c"],
        "args": ["exit 0"],
    }
    fields.update(extra)
    return fields


def summary(statuses: list[agent_pb2.ContainerStatus], name: str) -> list[tuple]:
    """(state, ready, message) of ``name``'s statuses, in order."""
    return [
        (run_pb2.ContainerState.Name(s.state), s.ready, s.message)
        for s in statuses
        if s.container_name == name
    ]


async def test_register_describes_node_and_heartbeats_follow(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    await start_agent(network="net-x")
    stream = await fake_cp.wait_registered()
    reg = stream.register
    assert reg is not None
    assert stream.received[0].HasField("register"), "Register must be the first message"
    assert reg.node_name == "node-a"
    assert list(reg.pools) == ["cpu", "gpu"]
    assert dict(reg.labels) == {"zone": "a"}
    assert reg.allocatable == node_pb2.Capacity(cpu_millis=4000, memory_bytes=8 * 2**30, gpus=2)
    assert reg.advertise_address == "10.1.2.3"
    assert reg.agent_version
    assert reg.network_mode == node_pb2.NETWORK_MODE_BRIDGE
    assert reg.network_name == "net-x"
    assert list(reg.containers) == []
    # heartbeat_interval_seconds=1: two heartbeats arrive within a few seconds.
    await fake_cp.wait_for(lambda: len(stream.heartbeats) >= 2, within=5, what="2 heartbeats")
    assert stream.heartbeats[0].time.seconds > 0


async def test_worker_reports_creating_running_then_ready_once_endpoints_accept(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    runtime.hold_endpoints = True
    await start_agent(runtime)
    await fake_cp.wait_registered()
    name = "muster-run-7-worker-0"
    fake_cp.start_container(**worker(7, 0))

    http_wait = "endpoint 'http' (port 8080) not accepting connections yet"
    grpc_wait = "endpoint 'grpc' (port 9090) not accepting connections yet"
    await fake_cp.wait_for(
        lambda: (
            (RUNNING, False, http_wait)
            in [(s.state, s.ready, s.message) for s in fake_cp.current.statuses]
        ),
        what="probe message for http",
    )
    runtime.open_endpoint(name, "http")
    await fake_cp.wait_for(
        lambda: grpc_wait in [s.message for s in fake_cp.current.statuses],
        what="probe message for grpc",
    )
    runtime.open_endpoint(name, "grpc")
    ready = await fake_cp.wait_status(name, RUNNING, ready=True)

    assert summary(fake_cp.current.statuses, name) == [
        ("CONTAINER_STATE_CREATING", False, ""),
        ("CONTAINER_STATE_RUNNING", False, ""),
        ("CONTAINER_STATE_RUNNING", False, http_wait),
        ("CONTAINER_STATE_RUNNING", False, grpc_wait),
        ("CONTAINER_STATE_RUNNING", True, ""),
    ]
    assert [(e.name, e.address) for e in ready.endpoints] == [
        ("http", "run-7-worker-0:8080"),
        ("grpc", "run-7-worker-0:9090"),
    ]
    assert (ready.run_id, ready.role, ready.replica) == (7, WORKER, 0)
    assert ready.time.seconds > 0


async def test_job_and_endpointless_worker_are_ready_when_running(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    await start_agent()
    await fake_cp.wait_registered()
    fake_cp.start_container(**job(8))
    fake_cp.start_container(**worker(8, 0, endpoints=[]))
    for name in ("muster-run-8-job-0", "muster-run-8-worker-0"):
        await fake_cp.wait_status(name, RUNNING, ready=True)
        assert summary(fake_cp.current.statuses, name) == [
            ("CONTAINER_STATE_CREATING", False, ""),
            ("CONTAINER_STATE_RUNNING", True, ""),
        ]


async def test_host_port_mode_addresses_use_advertise_address_and_host_ports(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(
        node_name="node-a",
        network_mode="host-port",
        advertise_address="10.1.2.3",
        port_range=(31000, 31999),
    )
    await start_agent(runtime, network_mode="host-port")
    stream = await fake_cp.wait_registered()
    assert stream.register is not None
    assert stream.register.network_mode == node_pb2.NETWORK_MODE_HOST_PORT
    fake_cp.start_container(**worker(9, 0))
    ready = await fake_cp.wait_status("muster-run-9-worker-0", RUNNING, ready=True)
    assert [(e.name, e.address) for e in ready.endpoints] == [
        ("http", "10.1.2.3:31000"),
        ("grpc", "10.1.2.3:31001"),
    ]


async def test_missing_image_fails_with_image_and_node_named(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    """Pull policy never: the image must already be there (the behaviour before pulls)."""
    runtime = FakeRuntime(node_name="node-a")
    runtime.remove_image("localhost/nope:1")
    runtime.publish("localhost/nope:1")  # in the registry, but never is never
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(
        **job(10, image="localhost/nope:1", pull_policy=run_pb2.PULL_POLICY_NEVER)
    )
    failed = await fake_cp.wait_status("muster-run-10-job-0", FAILED)
    assert failed.message.startswith("image 'localhost/nope:1' not found on node 'node-a'")
    assert "the pull policy is never" in failed.message
    assert runtime.create_count == 0
    assert not runtime.pulls
    # It fails before CREATING: nothing was created.
    assert [s[0] for s in summary(fake_cp.current.statuses, "muster-run-10-job-0")] == [
        "CONTAINER_STATE_FAILED"
    ]


async def test_other_start_errors_are_reported_as_failed_with_their_text(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    runtime.fail_next_start("muster-run-11-job-0", "create muster-run-11-job-0: no space left")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**job(11))
    failed = await fake_cp.wait_status("muster-run-11-job-0", FAILED)
    assert failed.message == "create muster-run-11-job-0: no space left"


@pytest.mark.parametrize(("action", "code"), [("exit3", 3), ("kill", 137)])
async def test_exit_codes_are_reported(
    fake_cp: FakeControlPlane, start_agent: StartAgent, action: str, code: int
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    name = "muster-run-12-worker-1"
    fake_cp.start_container(**worker(12, 1))
    await fake_cp.wait_status(name, RUNNING, ready=True)
    if action == "kill":
        runtime.kill(name)
    else:
        runtime.exit(name, 3)
    exited = await fake_cp.wait_status(name, EXITED)
    assert exited.HasField("exit_code") and exited.exit_code == code
    assert not exited.ready
    assert (exited.role, exited.replica) == (WORKER, 1)


async def test_probing_stops_when_the_worker_exits(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    runtime.hold_endpoints = True
    await start_agent(runtime)
    await fake_cp.wait_registered()
    name = "muster-run-13-worker-0"
    fake_cp.start_container(**worker(13, 0))
    await fake_cp.wait_for(
        lambda: any(s.message for s in fake_cp.current.statuses), what="probe message"
    )
    runtime.exit(name, 1)
    await fake_cp.wait_status(name, EXITED)
    # Once the exit is reported the probe task is gone: over three more watch
    # cycles nothing is probed and nothing else is sent about the container.
    probes, lists = runtime.probe_count, runtime.list_count
    await eventually(lambda: runtime.list_count >= lists + 3, what="three more polls")
    assert runtime.probe_count == probes
    assert [s for s in fake_cp.current.statuses if s.container_name == name][-1].state == EXITED


async def test_teardown_removes_every_container_and_is_idempotent(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**worker(14, 0))
    fake_cp.start_container(**worker(14, 1))
    fake_cp.start_container(**job(14, args=["sleep 100"]))
    fake_cp.start_container(**job(15))  # another run: must survive
    names = ["muster-run-14-worker-0", "muster-run-14-worker-1", "muster-run-14-job-0"]
    for name in names:
        await fake_cp.wait_status(name, RUNNING, ready=True)
    await fake_cp.wait_status("muster-run-15-job-0", RUNNING)

    fake_cp.teardown(14)
    for name in names:
        await fake_cp.wait_status(name, REMOVED)
    assert set(runtime.containers) == {"muster-run-15-job-0"}

    count = len(fake_cp.current.statuses)
    fake_cp.teardown(14)
    fake_cp.start_container(**job(16))  # a later marker: the teardown above is processed
    await fake_cp.wait_status("muster-run-16-job-0", RUNNING)
    extra = [s for s in fake_cp.current.statuses[count:] if s.run_id == 14]
    assert extra == [], "a repeated teardown reports nothing new"


async def test_start_is_idempotent_and_resends_the_current_status(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    name = "muster-run-17-worker-0"
    fake_cp.start_container(**worker(17, 0))
    await fake_cp.wait_status(name, RUNNING, ready=True)
    before = len(summary(fake_cp.current.statuses, name))
    fake_cp.start_container(**worker(17, 0))
    await fake_cp.wait_for(
        lambda: len(summary(fake_cp.current.statuses, name)) > before, what="re-sent status"
    )
    assert summary(fake_cp.current.statuses, name)[-1] == ("CONTAINER_STATE_RUNNING", True, "")
    assert runtime.create_count == 1


async def test_reconnect_reregisters_with_running_containers_without_duplicates(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    agent = await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**worker(18, 0))
    fake_cp.start_container(**job(18, args=["sleep 100"]))
    await fake_cp.wait_status("muster-run-18-worker-0", RUNNING, ready=True)
    await fake_cp.wait_status("muster-run-18-job-0", RUNNING)

    port = fake_cp.port
    await fake_cp.stop()
    runtime.exit("muster-run-18-job-0", 0)  # changes while disconnected
    await fake_cp.start(port)
    stream = await fake_cp.wait_registered(count=2, within=10)

    assert stream.register is not None
    by_name = {c.container_name: c for c in stream.register.containers}
    assert set(by_name) == {"muster-run-18-worker-0", "muster-run-18-job-0"}
    w = by_name["muster-run-18-worker-0"]
    assert (w.state, w.ready) == (RUNNING, True)
    assert [(e.name, e.address) for e in w.endpoints] == [
        ("http", "run-18-worker-0:8080"),
        ("grpc", "run-18-worker-0:9090"),
    ]
    j = by_name["muster-run-18-job-0"]
    assert (j.state, j.exit_code) == (EXITED, 0)
    assert runtime.create_count == 2 and set(runtime.containers) == set(by_name)

    # The control plane may resend assignments after a restart: no duplicates.
    fake_cp.start_container(**worker(18, 0))
    await fake_cp.wait_status("muster-run-18-worker-0", RUNNING, ready=True, stream=stream)
    assert runtime.create_count == 2
    await agent.stop()
    assert set(runtime.containers) == set(by_name), "stopping the agent leaves containers"


async def test_agent_adopts_containers_present_at_startup(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    runtime.add_existing(
        ContainerSpec(
            run_id=19,
            role="worker",
            replica=2,
            name="muster-run-19-worker-2",
            hostname="run-19-worker-2",
            image="img",
            endpoints={"http": 8080},
        )
    )
    runtime.add_existing(
        ContainerSpec(
            run_id=19, role="job", replica=0, name="muster-run-19-job-0", hostname="h", image="i"
        ),
        state="exited",
        exit_code=4,
    )
    await start_agent(runtime)
    stream = await fake_cp.wait_registered()
    assert stream.register is not None
    by_name = {c.container_name: c for c in stream.register.containers}
    w = by_name["muster-run-19-worker-2"]
    assert (w.run_id, w.role, w.replica, w.state, w.ready) == (19, WORKER, 2, RUNNING, True)
    assert [(e.name, e.address) for e in w.endpoints] == [("http", "run-19-worker-2:8080")]
    j = by_name["muster-run-19-job-0"]
    assert (j.role, j.state, j.exit_code) == (JOB, EXITED, 4)
    assert runtime.create_count == 0


async def test_container_removed_behind_the_agents_back_is_reported(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**job(20, args=["sleep 100"]))
    await fake_cp.wait_status("muster-run-20-job-0", RUNNING)
    runtime.vanish("muster-run-20-job-0")
    removed = await fake_cp.wait_status("muster-run-20-job-0", REMOVED)
    assert "outside the agent" in removed.message


async def test_agent_keeps_retrying_until_the_control_plane_appears(
    start_agent: StartAgent, fake_cp: FakeControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent")
    port = fake_cp.port
    await fake_cp.stop()
    agent = await start_agent()
    await eventually(
        lambda: sum("event=disconnected" in r.getMessage() for r in caplog.records) >= 3,
        what="three failed connection attempts",
    )
    await fake_cp.start(port)
    stream = await fake_cp.wait_registered(within=10)
    assert stream.register is not None and stream.register.node_name == "node-a"
    assert not agent.task.done()
