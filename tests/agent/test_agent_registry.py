"""The agent pulls from a real, password-protected registry into real Podman.

Every test gets its own registry (tests/registry_support.py) on 127.0.0.1 over
plain HTTP, so agents run with ``--insecure-registry`` for it (Podman 4.3 does
not treat 127.0.0.1 as insecure by itself: see the first test). Pushed images
are unique (``registry.push(..., unique=True)``), so the node really lacks them
and their digest after a pull is the registry's manifest digest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import RunningAgent, StartAgent
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import BUSYBOX, PYTHON, PodmanNode, random_run_id
from tests.registry_support import Registry, registry_auth_header, stalled_registry

pytestmark = pytest.mark.podman

PULLING = run_pb2.CONTAINER_STATE_PULLING
CREATING = run_pb2.CONTAINER_STATE_CREATING
RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
FAILED = run_pb2.CONTAINER_STATE_FAILED
MISSING = run_pb2.PULL_POLICY_MISSING
ALWAYS = run_pb2.PULL_POLICY_ALWAYS
NEVER = run_pb2.PULL_POLICY_NEVER


def creds(registry: Registry, password: str | None = None) -> list[agent_pb2.RegistryCredential]:
    """The registry's credentials as the control plane sends them (another password if given)."""
    return [
        agent_pb2.RegistryCredential(
            registry=registry.host,
            username=registry.username,
            password=registry.password if password is None else password,
        )
    ]


Start = Callable[..., Awaitable[str]]


@pytest.fixture
def start_job(fake_cp: FakeControlPlane) -> Start:
    """Send StartContainer for a job that prints ok and sleeps briefly; return its name."""

    async def start(image: str, run_id: int | None = None, replica: int = 0, **extra) -> str:
        run_id = run_id or random_run_id()
        name = f"muster-run-{run_id}-job-{replica}"
        fake_cp.start_container(
            run_id=run_id,
            role=run_pb2.REPLICA_ROLE_JOB,
            replica=replica,
            container_name=name,
            image=image,
            command=["sh", "-c"],
            args=["echo ok; sleep 2"],
            **extra,
        )
        return name

    return start


async def agent_for(
    start_agent: StartAgent, podman_node: PodmanNode, registry_hosts: tuple[str, ...], **extra
) -> RunningAgent:
    """An in-process agent on real Podman with these insecure registries."""
    return await start_agent(
        podman_node.runtime(),
        node_name=podman_node.node,
        network=podman_node.network,
        insecure_registries=registry_hosts,
        **extra,
    )


async def test_a_plain_http_registry_on_loopback_needs_insecure_registry(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    """Podman 4.3 speaks HTTPS to 127.0.0.1 too: without the flag the pull fails, saying so."""
    image = registry.ref("test/busybox:1")
    await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:1")
    await agent_for(start_agent, podman_node, ())
    await fake_cp.wait_registered()
    name = await start_job(image, pull_policy=MISSING, registry_credentials=creds(registry))
    failed = await fake_cp.wait_status(name, FAILED, within=15)
    assert failed.message.startswith(
        f"pull of image '{image}' from registry '{registry.host}' failed on node "
        f"'{podman_node.node}': registry unreachable: http: server gave HTTP response to HTTPS "
        "client (a plain-HTTP registry needs the agent flag --insecure-registry HOST:PORT)"
    ), failed.message


async def test_a_node_without_the_image_pulls_it_and_runs_it(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    image = registry.ref("test/busybox:1")
    digest = await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:1")
    await asyncio.to_thread(registry.forget, image)
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    name = await start_job(image, pull_policy=MISSING, registry_credentials=creds(registry))
    running = await fake_cp.wait_status(name, RUNNING, within=30)
    assert running.image_digest == digest
    exited = await fake_cp.wait_status(name, EXITED, within=30)
    assert (exited.exit_code, exited.image_digest) == (0, digest)
    await fake_cp.wait_for(
        lambda: [e.text for e in fake_cp.current.log_entries(name)] == ["ok"],
        within=15,
        what="the job's output",
    )
    mine = [s for s in fake_cp.current.statuses if s.container_name == name]
    assert [s.state for s in mine[:3]] == [PULLING, CREATING, RUNNING]
    # Podman 4.3's pull API reports no byte counts: PULLING says 0/0.
    assert (mine[0].pull_bytes_done, mine[0].pull_bytes_total) == (0, 0)
    assert mine[1].image_digest == digest  # known from CREATING on
    inspected = await podman_node.inspect(name)
    assert inspected["ImageDigest"] == digest
    assert registry.manifest_gets("test/busybox:1") == 1


async def test_auth_file_credentials_and_no_secret_in_the_log(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Credentials from --registry-auth-file; no log line carries them, in any form."""
    caplog.set_level(logging.DEBUG)
    image = registry.ref("test/busybox:2")
    digest = await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:2")
    auth_file = registry.write_auth_file(tmp_path / "auth.json")
    await agent_for(start_agent, podman_node, (registry.host,), registry_auth_file=auth_file)
    await fake_cp.wait_registered()
    name = await start_job(image)  # no credentials, no policy: MISSING, the file's credentials
    running = await fake_cp.wait_status(name, RUNNING, within=30)
    assert running.image_digest == digest
    # The control plane's credentials win: a wrong password there fails.
    other = await start_job(image, pull_policy=ALWAYS, registry_credentials=creds(registry, "no"))
    failed = await fake_cp.wait_status(other, FAILED, within=15)
    assert "unauthorized" in failed.message
    text = caplog.text
    assert "credentials=auth-file" in text and "credentials=control-plane" in text
    # Every form, the X-Registry-Auth header Podman got included (this pull sent one:
    # the control plane's credentials, user and a wrong password).
    forbidden = [*registry.secret_forms(), registry_auth_header(registry.username, "no")]
    assert [f for f in forbidden if f in text] == []
    assert registry.password not in failed.message


async def test_wrong_or_missing_credentials_and_a_missing_tag_fail_in_seconds(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    image = registry.ref("test/busybox:1")
    await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:1")
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    prefix = f"from registry '{registry.host}' failed on node '{podman_node.node}': "
    began = time.monotonic()
    wrong = await start_job(image, pull_policy=MISSING, registry_credentials=creds(registry, "x"))
    none = await start_job(image, pull_policy=ALWAYS)
    missing_tag = registry.ref("test/busybox:404")
    missing = await start_job(missing_tag, registry_credentials=creds(registry))
    for name in (wrong, none):
        failed = await fake_cp.wait_status(name, FAILED, within=15)
        assert failed.message == (
            f"pull of image '{image}' {prefix}unauthorized: authentication required"
        )
    failed = await fake_cp.wait_status(missing, FAILED, within=15)
    assert failed.message == f"pull of image '{missing_tag}' {prefix}manifest unknown"
    assert time.monotonic() - began < 10
    assert not await podman_node.exists(wrong)


async def test_an_unreachable_or_stalled_registry_fails_with_a_reason_not_a_hang(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    image = registry.ref("test/busybox:1")
    await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:1")
    with stalled_registry() as stalled_registry_:
        stalled = stalled_registry_.host
        # Podman retries a refused connection for about 3 s: the timeout leaves room for that.
        await agent_for(start_agent, podman_node, (registry.host, stalled), pull_timeout=6)
        await fake_cp.wait_registered()
        await asyncio.to_thread(registry.stop)
        began = time.monotonic()
        down = await start_job(image, registry_credentials=creds(registry))
        hung = await start_job(f"{stalled}/test/app:1")
        failed = await fake_cp.wait_status(down, FAILED, within=15)
        assert failed.message.startswith(f"pull of image '{image}' from registry ")
        assert "registry unreachable" in failed.message
        assert "connection refused" in failed.message
        failed = await fake_cp.wait_status(hung, FAILED, within=15)
        assert failed.message == (
            f"pull of image '{stalled}/test/app:1' from registry '{stalled}' failed on node "
            f"'{podman_node.node}': timed out after 6s (--pull-timeout)"
        )
        assert time.monotonic() - began < 12
        # The agent hung up, and so did Podman: nothing keeps waiting on the registry.
        assert stalled_registry_.accepted >= 1
        await fake_cp.wait_for(lambda: stalled_registry_.open_connections() == 0, 5, "hang-up")
    # Back up: the same image pulls now.
    await asyncio.to_thread(registry.start)
    again = await start_job(image, registry_credentials=creds(registry))
    await fake_cp.wait_status(again, RUNNING, within=30)


async def test_eight_replicas_of_one_image_pull_it_once(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    image = registry.ref("test/busybox:8")
    digest = await asyncio.to_thread(registry.push, BUSYBOX, "test/busybox:8")
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    run_id = random_run_id()
    names = [
        await start_job(image, run_id, i, pull_policy=MISSING, registry_credentials=creds(registry))
        for i in range(8)
    ]
    for name in names:
        running = await fake_cp.wait_status(name, RUNNING, within=60)
        assert running.image_digest == digest
    assert registry.manifest_gets("test/busybox:8") == 1


async def test_always_picks_up_a_re_pushed_tag_and_never_keeps_todays_behaviour(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    image = registry.ref("test/app:1")
    first = await asyncio.to_thread(registry.push, BUSYBOX, "test/app:1")
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    auth = creds(registry)
    # never: the image is not here, so the start fails and the registry is not asked.
    never = await start_job(image, pull_policy=NEVER, registry_credentials=auth)
    failed = await fake_cp.wait_status(never, FAILED, within=15)
    assert failed.message.startswith(f"image '{image}' not found on node '{podman_node.node}'")
    assert registry.manifest_gets("test/app:1") == 0
    one = await start_job(image, pull_policy=ALWAYS, registry_credentials=auth)
    assert (await fake_cp.wait_status(one, RUNNING, within=30)).image_digest == first
    second = await asyncio.to_thread(registry.push, PYTHON, "test/app:1")  # same tag, new image
    assert second != first
    two = await start_job(image, pull_policy=ALWAYS, registry_credentials=auth)
    assert (await fake_cp.wait_status(two, RUNNING, within=30)).image_digest == second
    # missing and never take what is here now, without asking the registry.
    three = await start_job(image, pull_policy=MISSING, registry_credentials=auth)
    four = await start_job(image, pull_policy=NEVER)
    for name in (three, four):
        assert (await fake_cp.wait_status(name, RUNNING, within=30)).image_digest == second
    assert registry.manifest_gets("test/app:1") == 2


async def test_a_digest_reference_pins_what_runs_even_when_the_tag_moves(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    start_job: Start,
) -> None:
    """``host/repo@sha256:...`` pulls that manifest, by digest, and keeps running it
    under ``always`` after the tag was re-pushed with another image."""
    first = await asyncio.to_thread(registry.push, BUSYBOX, "test/pinned:1")
    pinned = registry.ref(f"test/pinned@{first}")
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    auth = creds(registry)
    one = await start_job(pinned, pull_policy=MISSING, registry_credentials=auth)
    running = await fake_cp.wait_status(one, RUNNING, within=30)
    assert running.image_digest == first
    assert (await podman_node.inspect(one))["ImageDigest"] == first
    assert registry.manifest_gets(f"test/pinned@{first}") == 1
    assert registry.manifest_gets("test/pinned:1") == 0  # the tag was never asked for
    # missing: present, so the registry is not asked again.
    two = await start_job(pinned, pull_policy=MISSING, registry_credentials=auth)
    assert (await fake_cp.wait_status(two, RUNNING, within=30)).image_digest == first
    assert registry.manifest_gets(f"test/pinned@{first}") == 1
    # The tag moves; always asks the registry again, by digest, and gets the same image.
    second = await asyncio.to_thread(registry.push, PYTHON, "test/pinned:1")
    assert second != first
    three = await start_job(pinned, pull_policy=ALWAYS, registry_credentials=auth)
    assert (await fake_cp.wait_status(three, RUNNING, within=30)).image_digest == first
    assert (await podman_node.inspect(three))["ImageDigest"] == first
    assert registry.manifest_gets(f"test/pinned@{first}") == 2
    assert registry.manifest_gets("test/pinned:1") == 0


async def test_pull_image_and_list_images_over_the_stream(
    registry: Registry,
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
) -> None:
    image = registry.ref("test/warm:1")
    digest = await asyncio.to_thread(registry.push, BUSYBOX, "test/warm:1")
    await agent_for(start_agent, podman_node, (registry.host,))
    await fake_cp.wait_registered()
    fake_cp.pull_image(
        request_id="p1", image=image, policy=MISSING, registry_credentials=creds(registry)
    )
    pulled = await fake_cp.wait_image_pulled("p1", within=30)
    assert (pulled.image, pulled.digest, pulled.pulled, pulled.error) == (image, digest, True, "")
    fake_cp.pull_image(request_id="p2", image=image, policy=MISSING)
    again = await fake_cp.wait_image_pulled("p2", within=30)
    assert (again.digest, again.pulled, again.error) == (digest, False, "")
    fake_cp.pull_image(request_id="p3", image=registry.ref("test/warm:2"), policy=ALWAYS)
    failed = await fake_cp.wait_image_pulled("p3", within=30)
    assert failed.error.endswith(
        f"failed on node '{podman_node.node}': unauthorized: authentication required"
    )
    fake_cp.list_images("l1")
    listed = await fake_cp.wait_images_listed("l1", within=30)
    found = [i for i in listed.images if image in i.tags]
    assert len(found) == 1 and found[0].digest == digest and found[0].size_bytes > 0
    assert any(BUSYBOX in i.tags for i in listed.images)
