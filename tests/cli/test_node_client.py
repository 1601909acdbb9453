"""A client in another language (Node.js, loading proto/ at run time) calls CreateCodespec
over TLS with the bearer token, finding its credentials the way the CLI does."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, isolated_env, run_cli

NODE_EXAMPLE = REPO / "examples" / "node"


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    node = shutil.which("node")
    if node is None or not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("Node.js and examples/node/node_modules are needed: run scripts/setup.sh")
    return [node, str(NODE_EXAMPLE / "create-codespec.js")]


def run_node(
    node_client: list[str], *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*node_client, *args], capture_output=True, text=True, env=env, timeout=60
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The client failed with exactly one line on stderr (no stack, no warnings)."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def with_token(config: Path, token: str, to: Path) -> Path:
    """A copy of credential file `config` with another token."""
    doc = json.loads(config.read_text())
    to.parent.mkdir(parents=True, exist_ok=True)
    to.write_text(json.dumps({**doc, "token": token}))
    return to


def test_node_client_creates_codespec(cp_process, node_client) -> None:
    env = {**isolated_env(), **cp_process.env()}

    def create(name: str) -> subprocess.CompletedProcess[str]:
        return run_node(node_client, cp_process.address, name, "localhost/x:1", env=env)

    first = create("from-node")
    assert (first.returncode, first.stdout, first.stderr) == (0, "1\n", "")
    assert create("from-node").stdout == "1\n"  # identical: no new version
    shown = json.loads(
        run_cli("codespec", "show", "from-node", "-o", "json", server=cp_process, check=True).stdout
    )
    assert shown["env"] == {"FROM": "node"} and shown["kind"] == "job"
    assert "INVALID_ARGUMENT" in one_error_line(create("Bad Name"))
    # Without the address argument the server comes from MUSTER_SERVER, else the file.
    for environment in (env, {**isolated_env(), "MUSTER_CONFIG": str(cp_process.config)}):
        again = run_node(node_client, "from-node", "localhost/x:1", env=environment)
        assert (again.returncode, again.stdout) == (0, "1\n"), again.stderr


def test_node_client_finds_credentials_like_the_cli(cp_process, node_client, tmp_path) -> None:
    """--config, then MUSTER_CONFIG, then ~/.config/muster/config.json, then the
    control plane's admin.json in MUSTER_STATE_DIR; MUSTER_TOKEN overrides the token."""
    home = tmp_path / "home"
    env = {**isolated_env(home), "MUSTER_STATE_DIR": str(cp_process.state_dir)}
    args = ("found", "localhost/x:1")
    assert run_node(node_client, *args, env=env).returncode == 0  # admin.json
    with_token(cp_process.config, "mst_wrong", home / "muster" / "config.json")
    assert "UNAUTHENTICATED" in one_error_line(run_node(node_client, *args, env=env))
    admin = {**env, "MUSTER_CONFIG": str(cp_process.config)}
    assert run_node(node_client, *args, env=admin).returncode == 0
    flag = run_node(node_client, "--config", str(cp_process.config), *args, env=env)
    assert flag.returncode == 0, flag.stderr
    # A reader's token (MUSTER_TOKEN over the file's) may not create codespecs.
    reader = run_cli("token", "create", "node-reader", "--role", "reader", server=cp_process)
    assert reader.returncode == 0, reader.stderr
    denied = run_node(node_client, *args, env={**admin, "MUSTER_TOKEN": reader.stdout.strip()})
    assert "PERMISSION_DENIED" in one_error_line(denied)
    assert "role reader" in denied.stderr


def test_node_client_is_refused_with_a_wrong_token(cp_process, node_client, tmp_path) -> None:
    wrong = with_token(cp_process.config, "mst_wrong", tmp_path / "wrong.json")
    env = {**isolated_env(), **cp_process.env(), "MUSTER_CONFIG": str(wrong)}
    refused = run_node(node_client, "nope", "localhost/x:1", env=env)
    assert "UNAUTHENTICATED" in one_error_line(refused)
    assert run_cli("codespec", "show", "nope", server=cp_process).returncode == 1  # not created


def test_node_client_without_credentials_fails_clearly(cp_process, node_client, tmp_path) -> None:
    # No credential file at all: plaintext, which the TLS port does not answer.
    env = {**isolated_env(), "MUSTER_SERVER": cp_process.address}
    line = one_error_line(run_node(node_client, "nope", "localhost/x:1", env=env))
    assert f"cannot reach the muster control plane at {cp_process.address}" in line
    assert "no credentials were found" in line and "MUSTER_CONFIG" in line
    # A credential file that is named but missing, or broken, is named.
    missing = tmp_path / "missing.json"
    line = one_error_line(
        run_node(node_client, "nope", "localhost/x:1", env={**env, "MUSTER_CONFIG": str(missing)})
    )
    assert line == f"error: credential file {missing} does not exist"
    broken = tmp_path / "broken.json"
    broken.write_text('{"server": "127.0.0.1:1"}')
    line = one_error_line(
        run_node(node_client, "nope", "localhost/x:1", env={**env, "MUSTER_CONFIG": str(broken)})
    )
    assert line == f"error: credential file {broken} has no 'caCert' (or 'insecure': true)"
    # A token never travels in plaintext to an address other than loopback.
    plain = run_node(
        node_client, "10.0.0.1:50051", "nope", "localhost/x:1", env={**env, "MUSTER_TOKEN": "t"}
    )
    assert one_error_line(plain) == (
        "error: refusing to send a token in plaintext to 10.0.0.1:50051; give a caCert"
    )
