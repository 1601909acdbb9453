"""A run whose image comes from a password-protected registry, on real Podman:
without credentials the run fails at once naming image, registry and node;
after `muster registry login` the node pulls with the control plane's
credentials, the run succeeds and `run show` shows the digest it ran. The
password, in no form (nor the header the agent sends Podman), reaches the
control plane's log, the agent's log or what the CLI prints."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import BIN, isolated_env
from tests.e2e.conftest import BUSYBOX, podman, wait_for

pytestmark = pytest.mark.podman


def test_a_run_pulls_its_image_with_credentials_from_registry_login(make_cluster, registry) -> None:
    digest = registry.push(BUSYBOX, "test/app:1", unique=True)
    image = registry.ref("test/app:1")
    registry.forget(image)
    cluster = make_cluster({"a": ["cpu"]}, agent_extra=["--insecure-registry", registry.host])
    node = cluster.node("a")
    cluster.shell_codespec("app", "echo pulled-and-ran", image=image)

    refused = cluster.wait_run(cluster.create_run("-c", "app"))
    assert refused["status"] == "Failed", refused
    for part in (image, registry.host, node):
        assert part in refused["statusReason"], refused["statusReason"]

    login = subprocess.run(
        [
            *(str(BIN / "muster"), "registry", "login", registry.host),
            *("-u", registry.username, "--password-stdin"),
        ],
        input=registry.password + "\n",
        capture_output=True,
        text=True,
        env={**isolated_env(), **cluster.cp.env()},
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    run_id = cluster.create_run("-c", "app", "--pull", "missing")
    run = cluster.wait_run(run_id, timeout=120)
    assert run["status"] == "Succeeded", run
    assert run["replicas"][0]["imageDigest"] == digest
    shown = cluster.cli("run", "show", str(run_id), check=True).stdout
    row = next(line for line in shown.splitlines() if line.startswith("job-0"))
    assert row.split()[1] == node and row.endswith(digest)

    def output() -> str | None:
        text = cluster.cli("run", "logs", str(run_id), check=True).stdout
        return text if "pulled-and-ran" in text else None

    # a container's lines are all in once its removal is reported
    logs = wait_for(output, 30, "the job's output")
    assert any("pulling image " + image in e["message"] for e in run["events"])
    assert registry.manifest_gets("test/app:1")  # it really came from the registry
    assert podman("image", "exists", image, check=False).returncode == 0

    printed = login.stdout + login.stderr + shown + logs
    printed += cluster.cli("run", "show", str(run_id), "-o", "json", check=True).stdout
    printed += cluster.cli("registry", "list", check=True).stdout
    agent_log = (cluster.tmp / f"agent-{node}.log").read_text()
    assert "credentials=control-plane" in agent_log  # the agent pulled with the login ...
    for where, text in {
        "what the CLI printed": printed,
        "the control plane's log": (cluster.tmp / "controlplane.log").read_text(),
        "the agent's log": agent_log,  # ... and logged no form of it
    }.items():
        leaked = [form for form in registry.secret_forms() if form in text]
        assert leaked == [], f"a form of the password is in {where}"
