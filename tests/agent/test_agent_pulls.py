"""Pulling images, the pure parts: references, credentials and auth files, pull
stream decoding, failure messages, the agent's pull flags. The pull logic on the
fake runtime: test_agent_puller.py and test_agent_pull_statuses.py. Real registry
tests: test_agent_registry.py."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from agent.config import parse_args
from agent.podman_attrs import PullStream
from agent.podman_pull import pull_sync
from agent.pulls import (
    AuthFile,
    AuthFileError,
    canonical,
    describe_cause,
    failure_message,
    match_credentials,
    parse_auth_file,
    split_reference,
)
from agent.runtime import PullProgress, RegistryAuth
from tests.agent.pull_support import (
    IMAGE,
    auth_json,
)
from tests.registry_secrets import secret_forms

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
    secrets (tests/registry_secrets.secret_forms) include exactly that value."""
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
