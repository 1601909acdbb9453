"""Pulling images: references, credentials, messages (unit) and the pull logic
(one pull per image, concurrency limit, timeout, policies, PULLING statuses,
PullImage/ListImages) on the fake runtime. Real registry tests: test_agent_registry.py."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from pathlib import Path

import pytest

from agent.config import parse_args
from agent.podman_attrs import PullStream
from agent.podman_pull import pull_sync
from agent.pulls import (
    AuthFile,
    AuthFileError,
    Puller,
    PullFailed,
    PullOutcome,
    canonical,
    describe_cause,
    failure_message,
    match_credentials,
    parse_auth_file,
    split_reference,
)
from agent.runtime import ImageNotFound, PullProgress, RegistryAuth
from agent.runtime_fake import FakeRuntime, fake_digest
from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane
from tests.registry_support import secret_forms

PULLING = run_pb2.CONTAINER_STATE_PULLING
CREATING = run_pb2.CONTAINER_STATE_CREATING
RUNNING = run_pb2.CONTAINER_STATE_RUNNING
FAILED = run_pb2.CONTAINER_STATE_FAILED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
IMAGE = "reg.example:5000/team/app:1"


def auth_json(entries: dict[str, tuple[str, str]]) -> bytes:
    """A containers-auth.json with ``registry -> (user, password)``."""
    return json.dumps(
        {
            "auths": {
                key: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                for key, (u, p) in entries.items()
            }
        }
    ).encode()


def start_fields(run_id: int, replica: int = 0, **extra: object) -> dict[str, object]:
    """StartContainer fields for job replica ``replica`` of ``IMAGE``."""
    fields: dict[str, object] = {
        "run_id": run_id,
        "role": run_pb2.REPLICA_ROLE_JOB,
        "replica": replica,
        "container_name": f"muster-run-{run_id}-job-{replica}",
        "image": IMAGE,
        "pull_policy": run_pb2.PULL_POLICY_MISSING,
    }
    fields.update(extra)
    return fields


def states(stream_statuses: list[agent_pb2.ContainerStatus], name: str) -> list[str]:
    """State names of ``name``'s statuses, consecutive repeats folded."""
    out: list[str] = []
    for s in stream_statuses:
        if s.container_name == name:
            label = run_pb2.ContainerState.Name(s.state).removeprefix("CONTAINER_STATE_")
            if not out or out[-1] != label:
                out.append(label)
    return out


# -- references, credentials and messages (pure) --------------------------------------


@pytest.mark.parametrize(
    ("image", "parts", "key"),
    [
        ("busybox", ("", "busybox", ""), "busybox:latest"),
        ("team/app:1", ("", "team/app", ":1"), "team/app:1"),
        ("localhost/a", ("localhost", "a", ""), "localhost/a:latest"),
        ("127.0.0.1:5000/x/y:2", ("127.0.0.1:5000", "x/y", ":2"), "127.0.0.1:5000/x/y:2"),
        ("reg.io/c@sha256:ab", ("reg.io", "c", "@sha256:ab"), "reg.io/c@sha256:ab"),
    ],
)
def test_references_split_into_registry_path_and_tag(
    image: str, parts: tuple[str, str, str], key: str
) -> None:
    assert split_reference(image) == parts
    assert canonical(image) == key


def test_podman_errors_become_short_causes() -> None:
    """The texts Podman 4.3 gives for the failures the registry tests provoke."""
    src = "initializing source docker://127.0.0.1:45123/test/busybox:2: "
    manifest = "reading manifest 2 in 127.0.0.1:45123/test/busybox: "
    assert describe_cause(src + manifest + "manifest unknown: manifest unknown") == (
        "manifest unknown"
    )
    assert describe_cause(src + manifest + "unauthorized: authentication required") == (
        "unauthorized: authentication required"
    )
    refused = (
        'pinging container registry 127.0.0.1:45124: Get "http://127.0.0.1:45124/v2/": '
        "dial tcp 127.0.0.1:45124: connect: connection refused"
    )
    assert describe_cause(src + refused) == (
        "registry unreachable: dial tcp 127.0.0.1:45124: connect: connection refused"
    )
    https = (
        'pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": '
        "http: server gave HTTP response to HTTPS client"
    )
    assert describe_cause(src + https).endswith(
        "needs the agent flag --insecure-registry HOST:PORT)"
    )
    untrusted = (  # Podman 4.3 (Go 1.19); newer Go says "tls: failed to verify certificate: x509"
        'pinging container registry 10.213.7.1:5000: Get "https://10.213.7.1:5000/v2/": '
        "x509: certificate signed by unknown authority"
    )
    assert describe_cause(src + untrusted) == (
        "TLS verification failed: x509: certificate signed by unknown authority (trust the "
        "registry's CA on the node: /etc/containers/certs.d/HOST:PORT/ca.crt; "
        "--insecure-registry HOST:PORT is for a test registry only)"
    )


def test_failure_message_names_image_registry_node_and_cause() -> None:
    assert failure_message(
        "localhost:5000/team/app:1", "n1", "unauthorized: authentication required"
    ) == (
        "pull of image 'localhost:5000/team/app:1' from registry 'localhost:5000' failed on "
        "node 'n1': unauthorized: authentication required"
    )
    assert "a short name" in failure_message("busybox", "n1", "x")


def test_auth_file_entries_and_most_specific_match() -> None:
    entries = parse_auth_file(
        auth_json(
            {
                "reg.example:5000": ("alice", "pw:with:colons"),
                "https://reg.example:5000/team/": ("team", "t"),
                "https://index.docker.io/v1/": ("hub", "h"),
            }
        ),
        "auth.json",
    )
    assert match_credentials(IMAGE, entries) == RegistryAuth("reg.example:5000/team", "team", "t")
    found = match_credentials("reg.example:5000/other/app:1", entries)
    assert found is not None and (found.username, found.password) == ("alice", "pw:with:colons")
    assert match_credentials("docker.io/library/x:1", entries).username == "hub"  # type: ignore[union-attr]
    assert match_credentials("index.docker.io/library/x:1", entries).username == "hub"  # type: ignore[union-attr]
    assert match_credentials("Reg.Example:5000/other/app:1", entries).username == "alice"  # type: ignore[union-attr]
    assert match_credentials("busybox", entries) is None  # short names: never
    assert match_credentials("team/app:1", entries) is None
    assert match_credentials("other.example/x", entries) is None
    # The password never shows in a repr (and so in no log line or assertion diff).
    assert "pw:with:colons" not in repr(entries)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{", "not JSON"),
        (b'{"auths": []}', "expected"),
        (b'{"auths": {"r": {"auth": "%%%"}}}', "not base64"),
        (b'{"auths": {"r": {"auth": "' + base64.b64encode(b"nocolon") + b'"}}}', "user:password"),
    ],
)
def test_bad_auth_files_are_refused_without_showing_secrets(data: bytes, error: str) -> None:
    with pytest.raises(AuthFileError, match=error) as exc:
        parse_auth_file(data, "f.json")
    assert "nocolon" not in str(exc.value)


def test_auth_file_is_read_again_when_it_changes_and_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(auth_json({"reg.example:5000": ("a", "1")}))
    auth = AuthFile(path)
    assert [e.username for e in auth.entries()] == ["a"]
    path.write_bytes(auth_json({"reg.example:5000": ("b", "2")}))
    os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
    assert [e.username for e in auth.entries()] == ["b"]
    path.write_text("{broken")
    os.utime(path, ns=(2, 2))
    assert [e.username for e in auth.entries()] == ["b"]


def test_podman_pull_stream_decoding() -> None:
    """Podman 4.3's libpod stream has no byte counts; compat-style progress is summed."""
    stream = PullStream()
    assert stream.feed({"stream": "Copying blob sha256:59b2ef977724\n"}) is None
    assert stream.feed({"images": ["abc"], "id": "abc"}) is None
    assert stream.image_id == "abc" and stream.error is None
    stream = PullStream()
    assert stream.feed({"id": "l1", "progressDetail": {"current": 5, "total": 10}}) == (
        PullProgress(5, 10)
    )
    assert stream.feed({"id": "l2", "progressDetail": {"current": 1, "total": 30}}) == (
        PullProgress(6, 40)
    )
    stream.feed({"error": "unauthorized: authentication required"})
    assert stream.error == "unauthorized: authentication required"


class _Reply:
    """A libpod pull reply: a text line, then the image id."""

    status_code = 200

    def iter_lines(self) -> list[bytes]:
        return [
            b'{"stream": "Copying blob sha256:59b2ef977724"}',
            b'{"images": ["i1"], "id": "i1"}',
        ]

    def close(self) -> None:
        pass


class _Api:
    """Records the requests pull_sync makes."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, object], dict[str, str]]] = []

    def post(self, path: str, *, params, headers, **_: object) -> _Reply:  # type: ignore[no-untyped-def]
        self.posts.append((path, params, headers))
        return _Reply()


def test_the_header_podman_gets_is_a_form_the_leak_scans_look_for() -> None:
    """The credentials reach Podman as X-Registry-Auth, and the scans for leaked
    secrets (tests/registry_support.secret_forms) include exactly that value."""
    client = type("Client", (), {"api": _Api()})()
    auth = RegistryAuth("reg.example:5000", "cp-user", "cp-secret-9")
    held: list[object] = []
    assert pull_sync(client, IMAGE, auth, True, lambda p: None, 30, held) == "i1"  # type: ignore[arg-type]
    ((path, params, headers),) = client.api.posts
    assert (path, params) == (
        "/images/pull",
        {"reference": IMAGE, "policy": "always", "tlsVerify": True},
    )
    sent = headers["X-Registry-Auth"]
    assert json.loads(base64.urlsafe_b64decode(sent)) == {
        "username": "cp-user",
        "password": "cp-secret-9",
    }
    assert sent in secret_forms("cp-user", "cp-secret-9")
    pull_sync(client, IMAGE, None, False, lambda p: None, 30, held)
    assert "X-Registry-Auth" not in client.api.posts[-1][2]  # none: Podman's own auth files


def test_pull_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth = tmp_path / "auth.json"
    auth.write_bytes(auth_json({"reg.example:5000": ("a", "secret-1")}))
    base = ["--node-name", "n1", "--cpus", "1", "--memory", "1Gi", "--gpus", "0"]
    config = parse_args(base)
    assert (config.max_concurrent_pulls, config.pull_timeout) == (2, 600.0)
    assert config.registry_auth_file is None and config.insecure_registries == ()
    config = parse_args(
        [
            *base,
            "--registry-auth-file",
            str(auth),
            "--insecure-registry",
            "127.0.0.1:5000",
            "--insecure-registry",
            "reg.lan",
            "--max-concurrent-pulls",
            "4",
            "--pull-timeout",
            "90",
        ]
    )
    assert config.registry_auth_file == auth
    assert config.insecure_registries == ("127.0.0.1:5000", "reg.lan")
    assert (config.max_concurrent_pulls, config.pull_timeout) == (4, 90.0)
    auth.write_text("{")
    for bad in (
        ["--registry-auth-file", str(auth)],
        ["--insecure-registry", "http://reg:5000"],
        ["--max-concurrent-pulls", "0"],
        ["--pull-timeout", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse_args([*base, *bad])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--registry-auth-file" in err and "not JSON" in err
    assert "secret-1" not in err


# -- the puller on the fake runtime ---------------------------------------------------


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


# -- the agent: statuses, replicas, teardown, PullImage/ListImages ---------------------


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
