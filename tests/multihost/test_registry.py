"""Images across hosts (issue 15): every simulated host pulls a run's image from
a password-protected registry for itself, with the control plane's login.

The registry (tests/registry_support.py) listens on the bed's bridge address
(`bed.cp_address`, NET.1), the one machine address the hosts reach: over plain
HTTP, so the agents get `--insecure-registry` for it, or over HTTPS with a CA of
its own, which a host trusts once the CA is in its (private) /etc/containers/
certs.d. Its access log names the client of every request, so the tests see
which host fetched a manifest.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.podman_support import BUSYBOX
from tests.conftest import BIN, isolated_env, start_process
from tests.multihost.conftest import Bed
from tests.multihost.test_cluster import CP_ARGS, JOB_SCRIPT, PYTHON, WORKER_SCRIPT, MultiCluster
from tests.registry_support import Registry, start_registry


def start_cluster(bed: Bed, tmp_path: Path, agent_extra: list[str]) -> MultiCluster:
    """A control plane on the bed's bridge address; agents come later."""
    cp = start_process(tmp_path / "cp" / "cp.db", extra=CP_ARGS, host=bed.cp_address)
    return MultiCluster(bed, cp, tmp_path, f"m{secrets.token_hex(2)}", agent_extra=agent_extra)


def registry_login(cluster: MultiCluster, registry: Registry) -> None:
    """`muster registry login` as the admin, the password on standard input."""
    login = subprocess.run(
        [str(BIN / "muster"), "registry", "login", registry.host,
         "-u", registry.username, "--password-stdin"],
        input=registry.password + "\n", capture_output=True, text=True,
        env={**isolated_env(), **cluster.cp.env()}, timeout=60,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr


@pytest.fixture
def bed_registry(bed: Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry on the bed's bridge address; stopped and emptied afterwards."""
    registry = start_registry(tmp_path_factory.mktemp("registry"), bind=bed.cp_address)
    try:
        yield registry
    finally:
        registry.cleanup()


def test_each_host_pulls_the_runs_image_for_itself(
    bed: Bed, bed_registry: Registry, tmp_path: Path
) -> None:
    """A job on h1 and two workers on h2, all of one image that neither host has:
    each host fetches it once, itself, with the login the control plane holds, and
    every replica ran the registry's digest."""
    registry = bed_registry
    h1, h2 = bed.hosts[:2]
    digest = registry.push(PYTHON, "mh/app:1", unique=True)  # an image no host has
    image = registry.ref("mh/app:1")
    cluster = start_cluster(bed, tmp_path, ["--insecure-registry", registry.host])
    try:
        for host in (h1, h2):
            assert host.podman("image", "exists", image, check=False).returncode == 1
        cluster.start_agent(h1, "job")
        cluster.start_agent(h2, "work")
        cluster.wait_ready(h1, h2)
        registry_login(cluster, registry)
        cluster.cli("codespec", "create", "reg-worker", "-k", "worker", "--image", image,
                    "--endpoint", "http=7000", "--cpu-request", "1",
                    "--command", "--", "python3", "-c", WORKER_SCRIPT)  # fmt: skip
        cluster.cli("codespec", "create", "reg-job", "--image", image,
                    "--command", "--", "python3", "-c", JOB_SCRIPT)  # fmt: skip
        run_id = cluster.create_run(
            "-c", "reg-job", "--node-pool", "job", "--worker-codespec", "reg-worker",
            "--worker-replicas", "2", "--worker-node-pool", "work", "--pull", "missing",
        )  # fmt: skip
        run = cluster.wait_run(run_id)
        cluster.wait_empty(h1, h2)  # logs are complete once the containers are gone
        assert run["status"] == "Succeeded", (run, cluster.logs(run_id))
        placed = sorted((r["role"], r["nodeName"]) for r in run["replicas"])
        assert placed == [
            ("job", cluster.node(h1)), ("worker", cluster.node(h2)), ("worker", cluster.node(h2)),
        ]  # fmt: skip
        assert [r["imageDigest"] for r in run["replicas"]] == [digest] * 3
        assert "all 2 workers reached" in cluster.logs(run_id)
        # Each host has the image now, fetched by that host (its address in the
        # registry's access log), once (two workers on h2 shared one pull).
        for host in (h1, h2):
            inspected = json.loads(host.podman("image", "inspect", image).stdout)
            assert inspected[0]["Digest"] == digest, host.name
        assert sorted(registry.manifest_clients("mh/app:1")) == sorted([h1.address, h2.address])
        # With the control plane's login, which no log line carries in any form.
        logs = {h.name: (tmp_path / f"agent-{h.name}.log").read_text() for h in (h1, h2)}
        for name, text in logs.items():
            assert "credentials=control-plane" in text, name
        logs["controlplane"] = (tmp_path / "cp" / "controlplane.log").read_text()
        for name, text in logs.items():
            assert [f for f in registry.secret_forms() if f in text] == [], name
    finally:
        cluster.close()
        for host in (h1, h2):
            host.podman("rmi", "-f", image, check=False)


def test_tls_is_verified_against_each_hosts_certs_d(
    bed: Bed, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An HTTPS registry whose CA only h1 trusts (its /etc/containers/certs.d),
    agents without --insecure-registry: h1 pulls, h2 fails naming the certificate."""
    h1, h2 = bed.hosts[:2]
    registry = start_registry(
        tmp_path_factory.mktemp("tls-registry"), bind=bed.cp_address, tls=True
    )
    certs = f"/etc/containers/certs.d/{registry.host}"
    image = registry.ref("mh/tls:1")
    cluster = start_cluster(bed, tmp_path, [])
    try:
        digest = registry.push(BUSYBOX, "mh/tls:1", unique=True)
        h1.exec("mkdir", "-p", certs)
        h1.exec("cp", str(registry.ca_cert), f"{certs}/ca.crt")  # inside h1's mount namespace
        assert not (Path(certs) / "ca.crt").exists()  # the machine's /etc/containers: untouched
        cluster.start_agent(h1, "job")
        cluster.start_agent(h2, "work")
        cluster.wait_ready(h1, h2)
        registry_login(cluster, registry)
        pulled = cluster.cli("image", "pull", image, check=False)
        assert pulled.returncode == 1, pulled
        lines = dict(line.split(": ", 1) for line in pulled.stdout.splitlines())
        assert lines[cluster.node(h1)] == f"pulled {digest}"
        assert lines[cluster.node(h2)] == (
            f"failed: pull of image '{image}' from registry '{registry.host}' failed on node "
            f"'{cluster.node(h2)}': TLS verification failed: x509: certificate signed by "
            "unknown authority (trust the registry's CA on the node: "
            "/etc/containers/certs.d/HOST:PORT/ca.crt; --insecure-registry HOST:PORT is for a "
            "test registry only)"
        )
        assert registry.manifest_clients("mh/tls:1") == [h1.address]
        assert "tls_verify=True" in (tmp_path / "agent-h1.log").read_text()
        assert h2.podman("image", "exists", image, check=False).returncode == 1
    finally:
        cluster.close()
        h1.podman("rmi", "-f", image, check=False)
        h1.exec("rm", "-rf", certs, check=False)
        registry.cleanup()
