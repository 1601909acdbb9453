"""Self-fencing, placement generations and hosts entries, against a fake
control plane and the fake runtime."""

from __future__ import annotations

from agent.podman_attrs import RESET_MESSAGE, info_from_inspect, info_from_list
from agent.runtime_fake import FakeRuntime
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane
from tests.agent.test_agent_protocol import JOB, RUNNING

JOB_FIELDS = {
    "run_id": 7,
    "role": JOB,
    "replica": 0,
    "container_name": "muster-run-7-job-0",
    "hostname": "run-7-job-0",
    "image": "img",
}


async def test_a_cut_off_agent_removes_its_containers_after_the_lost_period(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    fake_cp.lost_after_seconds = 2  # learned at registration
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**JOB_FIELDS, generation=41)
    status = await fake_cp.wait_status("muster-run-7-job-0", RUNNING)
    assert status.generation == 41
    port = fake_cp.port
    await fake_cp.stop()  # the partition: nothing answers any more
    await eventually(lambda: not runtime.containers, within=15, what="self-fencing")
    await fake_cp.start(port)  # healed: the agent comes back with nothing
    stream = await fake_cp.wait_registered(count=2, within=15)
    register = stream.register
    assert register is not None and list(register.containers) == []


async def test_fence_after_zero_never_fences(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime, fence_after=0.0)
    await fake_cp.wait_registered()
    fake_cp.start_container(**JOB_FIELDS)
    await fake_cp.wait_status("muster-run-7-job-0", RUNNING)
    port = fake_cp.port
    await fake_cp.stop()
    await fake_cp.start(port)
    await fake_cp.wait_registered(count=2, within=15)
    assert "muster-run-7-job-0" in runtime.containers


async def test_an_explicit_fence_period_wins(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    fake_cp.lost_after_seconds = 3600
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime, fence_after=1.0)
    await fake_cp.wait_registered()
    fake_cp.start_container(**JOB_FIELDS)
    await fake_cp.wait_status("muster-run-7-job-0", RUNNING)
    await fake_cp.stop()
    await eventually(lambda: not runtime.containers, within=15, what="self-fencing")


async def test_hosts_and_generation_reach_the_container(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.start_container(**JOB_FIELDS, generation=5, hosts={"run-7-worker-0": "10.1.2.3"})
    await fake_cp.wait_status("muster-run-7-job-0", RUNNING)
    spec = runtime.containers["muster-run-7-job-0"].spec
    assert spec.hosts == {"run-7-worker-0": "10.1.2.3"} and spec.generation == 5


LABELS = {
    "muster.run-id": "3",
    "muster.role": "job",
    "muster.replica": "0",
    "muster.node": "n",
    "muster.generation": "12",
}


def test_a_container_reset_by_a_reboot_is_failed_not_restarted() -> None:
    inspect = {
        "Name": "muster-run-3-job-0",
        "Config": {"Labels": LABELS},
        "State": {"Status": "configured", "StartedAt": "2026-11-30T10:00:00.5Z"},
    }
    info = info_from_inspect(inspect, "n", "muster")
    assert info is not None and info.state == "failed" and info.message == RESET_MESSAGE
    assert info.generation == 12
    never = {**inspect, "State": {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"}}
    fresh = info_from_inspect(never, "n", "muster")
    assert fresh is not None and fresh.state == "creating" and not fresh.message
    listed = info_from_list(
        {"Names": ["muster-run-3-job-0"], "Labels": LABELS, "State": "created", "StartedAt": 1}
    )
    assert listed is not None and listed.state == "failed"
    unlisted = info_from_list(
        {"Names": ["x"], "Labels": LABELS, "State": "created", "StartedAt": -62135596800}
    )
    assert unlisted is not None and unlisted.state == "creating"
