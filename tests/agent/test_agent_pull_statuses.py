"""Pulls through the agent on the fake runtime: PULLING statuses with progress,
replicas sharing a pull, teardown during a pull, credentials kept out of the
log, PullImage/ListImages over the stream."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.runtime_fake import FakeRuntime, fake_digest
from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane
from tests.agent.pull_support import (
    CREATING,
    FAILED,
    IMAGE,
    PULLING,
    REMOVED,
    RUNNING,
    auth_json,
    start_fields,
    states,
)
from tests.registry_secrets import secret_forms


async def test_start_reports_pulling_with_progress_then_runs_with_the_digest(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    rt = FakeRuntime(node_name="node-a", all_images_exist=False)
    digest = rt.publish(IMAGE)
    rt.pull_progress[IMAGE] = [(0, 300), (100, 300), (300, 300)]
    rt.pull_delay = 1.2  # a step every 0.3 s; PULLING is reported at most every 0.5 s
    await start_agent(rt)
    await fake_cp.wait_registered()
    fake_cp.start_container(**start_fields(11))
    name = "muster-run-11-job-0"
    running = await fake_cp.wait_status(name, RUNNING)
    assert running.image_digest == digest
    statuses = [s for s in fake_cp.current.statuses if s.container_name == name]
    assert states(statuses, name) == ["PULLING", "CREATING", "RUNNING"]
    pulling = [s for s in statuses if s.state == PULLING]
    assert (pulling[0].pull_bytes_done, pulling[0].pull_bytes_total) == (0, 0)
    progress = [(s.pull_bytes_done, s.pull_bytes_total) for s in pulling]
    # 0/0 at once, then the pull's progress (the latest at least every 0.5 s), to the end.
    assert progress[0] == (0, 0) and progress[-1] == (300, 300), progress
    assert progress == sorted(progress) and len(progress) >= 3, progress
    creating = next(s for s in statuses if s.state == CREATING)
    assert creating.image_digest == digest
    assert (creating.pull_bytes_done, creating.pull_bytes_total) == (0, 0)
    # Later statuses keep the digest (the watcher's list results carry none of their own).
    rt.exit(name, 0)
    exited = await fake_cp.wait_status(name, run_pb2.CONTAINER_STATE_EXITED)
    assert exited.image_digest == digest


async def test_eight_replicas_one_pull_and_a_failed_pull_fails_them_all(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    rt = FakeRuntime(node_name="node-a", all_images_exist=False)
    rt.publish(IMAGE)
    rt.hold_pulls(IMAGE)
    await start_agent(rt)
    await fake_cp.wait_registered()
    for i in range(8):
        fake_cp.start_container(**start_fields(12, i))
    for i in range(8):
        await fake_cp.wait_status(f"muster-run-12-job-{i}", PULLING)
    rt.release_pulls(IMAGE)
    for i in range(8):
        await fake_cp.wait_status(f"muster-run-12-job-{i}", RUNNING)
    assert rt.pull_counts[IMAGE] == 1
    # A failing pull: every replica waiting for it fails with the same reason.
    broken = "reg.example:5000/team/broken:1"
    rt.hold_pulls(broken)
    for i in range(3):
        fake_cp.start_container(**start_fields(13, i, image=broken))
    for i in range(3):
        await fake_cp.wait_status(f"muster-run-13-job-{i}", PULLING)
    rt.release_pulls(broken)
    for i in range(3):
        failed = await fake_cp.wait_status(f"muster-run-13-job-{i}", FAILED)
        assert failed.message == (
            f"pull of image '{broken}' from registry 'reg.example:5000' failed on node "
            "'node-a': manifest unknown"
        )
    assert rt.pull_counts[broken] == 1
    assert rt.create_count == 8


async def test_teardown_does_not_wait_for_a_pull(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    rt = FakeRuntime(node_name="node-a", all_images_exist=False)
    rt.publish(IMAGE)
    rt.hold_pulls(IMAGE)
    await start_agent(rt)
    await fake_cp.wait_registered()
    fake_cp.start_container(**start_fields(14))
    name = "muster-run-14-job-0"
    await fake_cp.wait_status(name, PULLING)
    fake_cp.teardown(14)
    await fake_cp.wait_status(name, REMOVED, within=3)
    assert rt.create_count == 0
    assert states(fake_cp.current.statuses, name) == ["PULLING", "REMOVED"]
    rt.release_pulls(IMAGE)  # the pull itself went on; the image arrives for later starts
    await eventually(lambda: IMAGE in rt.images, what="the pull to finish")
    assert rt.create_count == 0


async def test_credentials_reach_the_runtime_and_never_the_log(
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(auth_json({"reg.example:5000": ("file-user", "file-secret-7")}))
    rt = FakeRuntime(node_name="node-a", all_images_exist=False)
    rt.publish(IMAGE)
    rt.require_credentials("reg.example:5000", "cp-user", "cp-secret-9")
    caplog.set_level(logging.DEBUG)
    await start_agent(rt, registry_auth_file=path)
    await fake_cp.wait_registered()
    cred = agent_pb2.RegistryCredential(
        registry="reg.example:5000", username="cp-user", password="cp-secret-9"
    )
    fake_cp.start_container(**start_fields(15, registry_credentials=[cred]))
    await fake_cp.wait_status("muster-run-15-job-0", RUNNING)
    fake_cp.start_container(**start_fields(16, pull_policy=run_pb2.PULL_POLICY_ALWAYS))
    failed = await fake_cp.wait_status("muster-run-16-job-0", FAILED)
    assert "unauthorized" in failed.message  # the auth file's user is not the registry's
    assert [p.auth.username for p in rt.pulls if p.auth] == ["cp-user", "file-user"]
    text = caplog.text
    assert "credentials=control-plane" in text and "credentials=auth-file" in text
    forbidden = [
        *secret_forms("cp-user", "cp-secret-9"),
        *secret_forms("file-user", "file-secret-7"),
    ]
    assert [f for f in forbidden if f in text] == []


async def test_pull_image_and_list_images_over_the_stream(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    rt = FakeRuntime(node_name="node-a", all_images_exist=False)
    digest = rt.publish(IMAGE)
    rt.add_image("localhost/local:1", fake_digest("local"))
    await start_agent(rt)
    await fake_cp.wait_registered()
    fake_cp.pull_image(request_id="r1", image=IMAGE, policy=run_pb2.PULL_POLICY_MISSING)
    pulled = await fake_cp.wait_image_pulled("r1")
    assert (pulled.image, pulled.digest, pulled.pulled, pulled.error) == (IMAGE, digest, True, "")
    fake_cp.pull_image(request_id="r2", image=IMAGE, policy=run_pb2.PULL_POLICY_MISSING)
    again = await fake_cp.wait_image_pulled("r2")
    assert (again.digest, again.pulled) == (digest, False)
    fake_cp.pull_image(request_id="r3", image="reg.example:5000/team/nope:9")
    failed = await fake_cp.wait_image_pulled("r3")
    assert failed.error.endswith("failed on node 'node-a': manifest unknown")
    assert not failed.digest and not failed.pulled
    fake_cp.list_images("l1")
    listed = await fake_cp.wait_images_listed("l1")
    assert {(tuple(i.tags), i.digest) for i in listed.images} == {
        ((IMAGE,), digest),
        (("localhost/local:1",), fake_digest("local")),
    }
    assert rt.pull_counts[IMAGE] == 1
