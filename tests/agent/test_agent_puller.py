"""The puller on the fake runtime: one pull per image, the concurrency limit,
the timeout, policies, digests, failure messages, credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.pulls import (
    AuthFile,
    Puller,
    PullFailed,
    PullOutcome,
)
from agent.runtime import ImageNotFound, RegistryAuth
from agent.runtime_fake import FakeRuntime
from tests.agent.conftest import eventually
from tests.agent.pull_support import (
    IMAGE,
    auth_json,
)


async def test_one_pull_per_image_however_many_need_it() -> None:
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    digest = rt.publish(IMAGE)
    rt.hold_pulls(IMAGE)
    puller = Puller(rt)
    waiters = [asyncio.create_task(puller.ensure(IMAGE, "missing")) for _ in range(8)]
    await eventually(lambda: rt.pull_counts[IMAGE] == 1, what="the pull to start")
    # Another reference spelling of the same image joins too.
    waiters.append(asyncio.create_task(puller.ensure(IMAGE, "always")))
    await asyncio.sleep(0)
    rt.release_pulls(IMAGE)
    outcomes = await asyncio.gather(*waiters)
    assert {(o.digest, o.pulled) for o in outcomes} == {(digest, True)}
    assert rt.pull_counts[IMAGE] == 1
    assert puller.in_flight() == []
    # Present now: missing does not pull again, always does.
    assert (await puller.ensure(IMAGE, "missing")).pulled is False
    assert (await puller.ensure(IMAGE, "always")).pulled is False  # same digest
    assert rt.pull_counts[IMAGE] == 2


async def test_concurrent_pulls_are_limited() -> None:
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    images = [f"reg.example:5000/app{i}:1" for i in range(5)]
    for image in images:
        rt.publish(image)
    rt.pull_delay = 0.05
    puller = Puller(rt, max_concurrent=2)
    await asyncio.gather(*(puller.ensure(i, "missing") for i in images))
    assert rt.max_pulls_in_flight == 2
    assert sum(rt.pull_counts.values()) == 5


async def test_a_pull_that_takes_too_long_fails_with_the_timeout() -> None:
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    rt.publish(IMAGE)
    rt.hold_pulls(IMAGE)  # a registry that never answers
    puller = Puller(rt, timeout=0.2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(PullFailed) as exc:
        await puller.ensure(IMAGE, "missing")
    assert loop.time() - began < 2
    assert str(exc.value) == (
        f"pull of image '{IMAGE}' from registry 'reg.example:5000' failed on node 'n1': "
        "timed out after 0.2s (--pull-timeout)"
    )
    assert puller.in_flight() == []  # the next start tries again
    rt.release_pulls(IMAGE)
    assert (await puller.ensure(IMAGE, "missing")).pulled


async def test_policies() -> None:
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    first = rt.publish(IMAGE)
    puller = Puller(rt)
    with pytest.raises(ImageNotFound) as exc:
        await puller.ensure(IMAGE, "never")
    assert str(exc.value).startswith(f"image '{IMAGE}' not found on node 'n1'; the pull policy")
    assert rt.pulls == []
    assert (await puller.ensure(IMAGE, "missing")).digest == first
    assert (await puller.ensure(IMAGE, "never")).digest == first  # present: fine
    second = rt.publish(IMAGE)  # re-pushed under the same tag
    assert (await puller.ensure(IMAGE, "missing")).digest == first
    moved = await puller.ensure(IMAGE, "always")
    assert (moved.digest, moved.pulled) == (second, True)
    assert rt.pull_counts[IMAGE] == 2


async def test_a_digest_reference_is_its_own_pull_and_missing_keeps_it() -> None:
    """A pull by digest never joins a pull of the tag (the tag may name another image
    by the time it is resolved), and ``missing`` does not pull a digest that is here."""
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    first = rt.publish(IMAGE)
    pinned = IMAGE.rsplit(":", 1)[0] + "@" + first
    rt.publish(pinned, first)
    rt.hold_pulls(IMAGE)
    rt.hold_pulls(pinned)
    puller = Puller(rt)
    by_tag = asyncio.create_task(puller.ensure(IMAGE, "missing"))
    by_digest = asyncio.create_task(puller.ensure(pinned, "missing"))
    await eventually(
        lambda: (rt.pull_counts[IMAGE], rt.pull_counts[pinned]) == (1, 1),
        what="two pulls, not one joined by the other",
    )
    assert sorted(puller.in_flight()) == sorted([IMAGE, pinned])
    rt.release_pulls(IMAGE)
    rt.release_pulls(pinned)
    assert {(await by_tag).digest, (await by_digest).digest} == {first}
    moved = rt.publish(IMAGE)  # the tag is re-pushed with another image
    assert await puller.ensure(pinned, "missing") == PullOutcome(first, pulled=False)
    assert rt.pull_counts[pinned] == 1  # present: no pull
    assert await puller.ensure(pinned, "always") == PullOutcome(first, pulled=False)
    assert (await puller.ensure(IMAGE, "always")).digest == moved


async def test_failures_name_image_registry_node_and_cause() -> None:
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    rt.publish(IMAGE)
    rt.require_credentials("reg.example:5000", "alice", "s3cret")
    puller = Puller(rt)
    prefix = f"pull of image '{IMAGE}' from registry 'reg.example:5000' failed on node 'n1': "
    for creds in ((), (RegistryAuth("reg.example:5000", "alice", "wrong"),)):
        with pytest.raises(PullFailed) as exc:
            await puller.ensure(IMAGE, "missing", creds)
        assert str(exc.value) == prefix + "unauthorized: authentication required"
        assert "wrong" not in str(exc.value)
    good = [RegistryAuth("reg.example:5000", "alice", "s3cret")]
    with pytest.raises(PullFailed) as exc:
        await puller.ensure("reg.example:5000/team/app:2", "missing", good)
    assert str(exc.value).endswith("failed on node 'n1': manifest unknown")
    rt.unreachable.add("reg.example:5000")
    with pytest.raises(PullFailed) as exc:
        await puller.ensure(IMAGE, "always")
    assert "registry unreachable" in str(exc.value) and "connection refused" in str(exc.value)


async def test_credentials_from_the_control_plane_win_over_the_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(auth_json({"reg.example:5000": ("file-user", "file-pw")}))
    rt = FakeRuntime(node_name="n1", all_images_exist=False)
    rt.publish(IMAGE)
    rt.publish("other.example/x:1")
    puller = Puller(rt, auth_file=AuthFile(path), insecure_registries=["reg.example:5000"])
    explicit = RegistryAuth("reg.example:5000", "cp-user", "cp-pw")
    await puller.ensure(IMAGE, "always", [explicit])
    await puller.ensure(IMAGE, "always")
    await puller.ensure("other.example/x:1", "always", [explicit])
    used = [(p.image, p.auth.username if p.auth else None, p.tls_verify) for p in rt.pulls]
    assert used == [
        (IMAGE, "cp-user", False),
        (IMAGE, "file-user", False),
        ("other.example/x:1", None, True),  # no credentials for another registry
    ]
