"""The secure default as people meet it: real control plane, agent and CLI
processes, their flags, files and one-line errors."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.flags import parse_args
from tests.conftest import BIN, Process, isolated_env, run_cli, start_process, wait_for


@pytest.fixture
def secure_cp(tmp_path: Path) -> Iterator[Process]:
    cp = start_process(tmp_path / "cp" / "cp.db")
    try:
        yield cp
    finally:
        cp.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_ca_server_certificate_and_admin_credentials(
    secure_cp: Process,
) -> None:
    state = secure_cp.state_dir
    assert mode(state / "pki" / "ca.key") == 0o600 and mode(state / "pki" / "server.key") == 0o600
    assert mode(state / "admin.json") == 0o600
    admin = json.loads((state / "admin.json").read_text())
    assert admin["server"] == secure_cp.address and admin["token"].startswith("mst_")
    assert admin["caCert"] == (state / "pki" / "ca.crt").read_text()
    # The CLI on this machine finds the admin file in the default state dir by itself.
    env = {**isolated_env(), "MUSTER_STATE_DIR": str(state)}
    who = subprocess.run(
        [str(BIN / "muster"), "whoami"], capture_output=True, text=True, env=env, timeout=30
    )
    assert who.returncode == 0 and who.stdout.startswith("admin (role admin"), who.stderr
    # A restart keeps the CA and the credentials working.
    ca = (state / "pki" / "ca.crt").read_bytes()
    again = secure_cp.restart()
    try:
        assert (state / "pki" / "ca.crt").read_bytes() == ca
        assert run_cli("whoami", server=again, check=True).stdout.startswith("admin")
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("listeners", "named"),
    [
        (["--listen", "0.0.0.0:0"], "0.0.0.0:0 (--listen)"),
        # the data plane serves buffers' bytes over plain HTTP with --insecure
        (["--listen", "127.0.0.1:0", "--data-listen", "0.0.0.0:0"], "0.0.0.0:0 (--data-listen)"),
        (["--listen", "127.0.0.1:0", "--data-listen", ":0"], ":0 (--data-listen)"),
    ],
)
def test_plaintext_is_refused_off_loopback_with_one_line(
    tmp_path: Path, listeners: list[str], named: str
) -> None:
    result = subprocess.run(
        [
            str(BIN / "muster-controlplane"),
            "--insecure",
            *listeners,
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "refusing to serve plaintext" in result.stderr
    assert named in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_insecure_data_plane_on_loopback_or_off_is_accepted() -> None:
    for data_listen in ("127.0.0.1:0", "[::1]:0", "localhost:0", "off", ""):
        args = parse_args(["--insecure", "--listen", "127.0.0.1:0", "--data-listen", data_listen])
        assert args.insecure and args.data_listen == data_listen
    # without --insecure the data plane serves HTTPS, so any address is fine
    args = parse_args(["--listen", "127.0.0.1:0", "--data-listen", "0.0.0.0:0"])
    assert args.data_listen == "0.0.0.0:0"


def test_insecure_on_loopback_serves_plaintext_without_tokens(tmp_path: Path) -> None:
    cp = start_process(tmp_path / "cp.db", secure=False)
    try:
        assert cp.config is None
        listed = run_cli("codespec", "list", server=cp.address)
        assert listed.returncode == 0, listed.stderr
    finally:
        cp.stop()


def test_login_token_lifecycle_and_one_line_errors(secure_cp: Process, tmp_path: Path) -> None:
    secret = run_cli("token", "create", "bob", "--role", "reader", server=secure_cp, check=True)
    token = secret.stdout.strip()
    assert token.startswith("mst_") and secret.stdout.count("\n") == 1
    target = tmp_path / "bob.json"

    def login_as(secret: str, path: Path):
        return run_cli(
            "login", "--server", secure_cp.address, "--ca-cert", str(secure_cp.ca_cert),
            "--token", secret, "--config", str(path),
        )  # fmt: skip

    login = login_as(token, target)
    assert login.returncode == 0 and "as 'bob' (role reader)" in login.stdout, login.stderr
    assert mode(target) == 0o600
    as_bob = {"MUSTER_CONFIG": str(target)}
    assert run_cli("whoami", env=as_bob, check=True).stdout.startswith("bob (role reader")
    denied = run_cli("codespec", "create", "x", "--image", "i", env=as_bob)
    assert denied.returncode == 1 and denied.stderr.count("\n") == 1
    assert "role reader" in denied.stderr and "role user" in denied.stderr
    listed = run_cli("token", "list", "-o", "json", server=secure_cp, check=True)
    assert {t["name"] for t in json.loads(listed.stdout)} == {"admin", "bob"}
    assert token not in listed.stdout
    assert run_cli("token", "revoke", "bob", server=secure_cp, check=True).returncode == 0
    refused = run_cli("whoami", env=as_bob)
    assert refused.returncode == 1 and "revoked" in refused.stderr
    bad = tmp_path / "bad.json"
    failed = login_as("mst_wrong", bad)
    assert failed.returncode == 1 and "UNAUTHENTICATED" in failed.stderr and not bad.exists()
    for args, text in [
        (("token", "create", "Bad Name", "--role", "user"), "not a valid token name"),
        (("token", "create", "c", "--role", "user", "--ttl", "soon"), "not a duration"),
        (("token", "revoke", "nobody"), "was not found"),
        (("node", "join-token", "create", "--pool", "Bad Pool"), "not a valid pool name"),
        (("node", "remove", "nobody"), "was not found"),
    ]:
        result = run_cli(*args, server=secure_cp)
        assert result.returncode != 0 and text in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1


def agent(cp: Process, tmp: Path, name: str, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "muster-agent"),
            "--server",
            cp.address,
            "--node-name",
            name,
            "--network",
            f"muster-test-{name}",
            "--state-dir",
            str(tmp / name),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=isolated_env(),
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.podman
def test_agent_joins_once_then_uses_its_certificate(secure_cp: Process, tmp_path: Path) -> None:
    name = f"j{secrets.token_hex(3)}"
    try:
        no_token = agent(secure_cp, tmp_path, name, "--pool", "cpu")
        out, _ = no_token.communicate(timeout=30)
        assert no_token.returncode == 1 and "join first with --join-token" in out
        bogus = agent(
            secure_cp, tmp_path, name, "--pool", "cpu", "--ca-cert", str(secure_cp.ca_cert),
            "--join-token", "msj_bogus",
        )  # fmt: skip
        out, _ = bogus.communicate(timeout=30)
        assert bogus.returncode == 1 and "join token is not valid" in out
        token = run_cli("node", "join-token", "create", "--pool", "cpu", server=secure_cp)
        flags = ["--pool", "cpu", "--ca-cert", str(secure_cp.ca_cert)]
        first = agent(secure_cp, tmp_path, name, *flags, "--join-token", token.stdout.strip())

        def ready() -> bool:
            nodes = json.loads(run_cli("node", "list", "-o", "json", server=secure_cp).stdout)
            return any(n["name"] == name and n["status"] == "Ready" for n in nodes)

        try:
            wait_for(ready, 30, f"node {name} Ready")
        finally:
            stop(first)
        state = tmp_path / name
        assert mode(state) == 0o700 and mode(state / "node.key") == 0o600
        assert {p.name for p in state.iterdir()} >= {"node.key", "node.crt", "ca.crt", "agent.json"}
        # Restarted without a join token (it was single-use): the certificate suffices.
        second = agent(secure_cp, tmp_path, name, "--pool", "cpu")
        try:
            wait_for(lambda: second.poll() is None and ready(), 30, "the node Ready again")
        finally:
            stop(second)
        # Claiming a pool the join token did not grant is refused (and said so).
        greedy = agent(secure_cp, tmp_path, name, "--pool", "cpu", "--pool", "gpu")
        try:
            lines: list[str] = []

            def refused() -> bool:
                assert greedy.stdout is not None
                lines.append(greedy.stdout.readline())
                return "PERMISSION_DENIED" in lines[-1]

            wait_for(refused, 30, "the greedy registration to be refused", interval=0)
            assert "gpu" in lines[-1]
        finally:
            stop(greedy)
    finally:
        subprocess.run(
            ["podman", "network", "rm", "-f", f"muster-test-{name}"],
            capture_output=True,
            timeout=60,
        )
    assert os.path.exists(state / "node.crt")


def test_a_taken_agent_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "muster-controlplane"), "--listen", "127.0.0.1:0",
                "--agent-listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s"),
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("the port is in use or the address is not local")
    )
    assert "Traceback" not in result.stderr
