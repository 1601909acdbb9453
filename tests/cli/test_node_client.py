"""A client in another language (Node.js, loading proto/ at run time) calls CreateCodespec."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import REPO, run_cli

NODE_EXAMPLE = REPO / "examples" / "node"


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    node = shutil.which("node")
    if node is None or not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("Node.js and examples/node/node_modules are needed: run scripts/setup.sh")
    return [node, str(NODE_EXAMPLE / "create-codespec.js")]


def test_node_client_creates_codespec(cp_process, node_client) -> None:
    def create(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*node_client, cp_process.address, name, "localhost/x:1"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = create("from-node")
    assert (first.returncode, first.stdout) == (0, "1\n"), first.stderr
    assert create("from-node").stdout == "1\n"  # identical: no new version
    shown = json.loads(
        run_cli("codespec", "show", "from-node", "-o", "json", server=cp_process, check=True).stdout
    )
    assert shown["env"] == {"FROM": "node"} and shown["kind"] == "job"
    bad = create("Bad Name")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "name:" in bad.stderr
