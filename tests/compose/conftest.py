"""The repository's compose.yaml, brought up for real with podman-compose.

One stack per test module (bringing it up takes seconds, the tests share it and
run in file order). Everything of the stack has names unique to this session:
the compose project ``muster-test-<tag>``, the run network
``muster-test-<tag>-runs``, the node names ``<tag>-cpu-1``... and a free port on
127.0.0.1. Teardown removes all of it even when a test fails: the project's
containers, pod, networks and volumes, and every run container labelled with one
of the stack's node names; then it checks that nothing is left.

The stack is secure like any muster deployment: the tests talk to it as its
administrator, with a copy of the admin.json that the control plane wrote into
its volume (MUSTER_CONFIG), at the published port (MUSTER_SERVER).

Run container names carry the short cluster id of their control plane's
database (``muster-1a2b3c-run-1-worker-0``), so the stack shares the host's
Podman with any other muster test without a collision; its containers are
found by their ``muster.node`` labels.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, free_port, run_cli, wait_for

COMPOSE_FILE = REPO / "compose.yaml"
PODMAN_SOCKET = Path("/run/podman/podman.sock")
CP_IMAGE = "localhost/muster-controlplane:latest"
AGENT_IMAGE = "localhost/muster-agent:latest"
TERMINAL = {"Succeeded", "Failed", "Canceled"}
SHORT_NODES = ("cpu-1", "cpu-2", "gpu-1")
SERVICES = ("controlplane", "join", *(f"agent-{n}" for n in SHORT_NODES))
# The named volumes of compose.yaml: all of them survive `down`, none `down -v`.
VOLUMES = ("controlplane-data", "join-tokens", *(f"agent-{n}" for n in SHORT_NODES))
# Short liveness for the test: heartbeats every second, NotReady after 3 s, Lost after 8 s.
TEST_SETTINGS = {
    "MUSTER_HEARTBEAT_INTERVAL": "1",
    "MUSTER_NODE_NOT_READY_AFTER": "3",
    "MUSTER_NODE_LOST_AFTER": "8",
    "MUSTER_READINESS_TIMEOUT": "30",
}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """The podman CLI (the tests' own inspection and cleanup)."""
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def run_containers(label: str | None = None) -> list[str]:
    """Names of muster run containers (any node, or those with ``label``)."""
    filt = label or "muster.run-id"
    out = podman("ps", "-a", "--filter", f"label={filt}", "--format", "{{.Names}}").stdout
    return out.split()


@dataclass
class Stack:
    """A running compose stack and the names that belong to it."""

    tag: str
    project: str
    run_network: str
    port: int
    env: dict[str, str]
    log: Path
    config: Path  # the admin credentials, copied out of the control plane's volume
    compose_file: Path = COMPOSE_FILE
    services: tuple[str, ...] = SERVICES

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def volume(self, name: str = "controlplane-data") -> str:
        return f"{self.project}_{name}"

    def volume_dir(self, name: str) -> Path:
        """Where one of the stack's named volumes lives on this host."""
        mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", self.volume(name))
        return Path(mountpoint.stdout.strip())

    @property
    def pod(self) -> str:
        return f"pod_{self.project}"

    def node(self, short: str) -> str:
        return f"{self.tag}-{short}"

    def short(self, node: str) -> str:
        return node.removeprefix(f"{self.tag}-")

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    # -- podman-compose ---------------------------------------------------------

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """``podman-compose -f COMPOSE_FILE -p PROJECT ARGS``; fails with its output."""
        cmd = [str(BIN / "podman-compose"), "-f", str(self.compose_file), "-p", self.project, *args]
        result = subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        with self.log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr[-2000:]}"
            )
        return result

    # -- the muster CLI against the stack ------------------------------------------

    def fetch_credentials(self, timeout: float = 60) -> dict:
        """Copy admin.json out of the control plane's volume (it is written on the
        first start) into `config`; returns its content."""
        source = self.volume_dir("controlplane-data") / "admin.json"
        wait_for(source.is_file, timeout, f"the control plane to write {source}")
        text = source.read_text()
        self.config.touch(mode=0o600)
        self.config.write_text(text)
        return json.loads(text)

    def client_env(self) -> dict[str, str]:
        """What a client on this host needs to reach the stack as its admin."""
        return {"MUSTER_CONFIG": str(self.config), "MUSTER_SERVER": self.server}

    def cli(self, *args: str, check: bool = True, timeout: float = 120):
        return run_cli(*args, check=check, timeout=timeout, env=self.client_env())

    def nodes(self) -> dict[str, dict]:
        try:
            out = self.cli("node", "list", "-o", "json", timeout=10).stdout
        except (AssertionError, subprocess.TimeoutExpired):
            return {}  # the control plane is not answering yet
        return {n["name"]: n for n in json.loads(out) if n["name"].startswith(f"{self.tag}-")}

    def wait_ready(self, names: list[str], timeout: float = 60) -> dict[str, dict]:
        def ready() -> dict[str, dict] | None:
            nodes = self.nodes()
            ok = all(nodes.get(n, {}).get("status") == "Ready" for n in names)
            return nodes if ok else None

        return wait_for(ready, timeout, f"nodes {names} to be Ready")

    def node_status(self, node: str) -> str:
        return self.nodes().get(node, {}).get("status", "absent")

    def run_json(self, run_id: int) -> dict:
        return json.loads(self.cli("run", "show", str(run_id), "-o", "json").stdout)

    def wait_run(self, run_id: int, statuses=TERMINAL, timeout: float = 90) -> dict:
        def reached() -> dict | None:
            run = self.run_json(run_id)
            return run if run["status"] in statuses else None

        return wait_for(reached, timeout, f"run {run_id} to reach {sorted(statuses)}")

    def create_run(self, *args: str) -> int:
        return int(self.cli("run", "create", *args).stdout.strip())

    def save_logs(self) -> None:
        """Each service's log next to compose.log, for post-mortems."""
        for service in self.services:
            logs = podman("logs", self.container(service), check=False)
            if logs.returncode == 0:
                (self.log.parent / f"{service}.log").write_text(logs.stdout + logs.stderr)

    # -- what of the stack exists in Podman -------------------------------------------

    def run_containers(self, run_id: int | None = None) -> list[str]:
        """Run containers created by this stack's agents (of one run, or all)."""
        if run_id is None:
            return sorted(
                c for n in SHORT_NODES for c in run_containers(f"muster.node={self.node(n)}")
            )
        names = []
        for n in SHORT_NODES:
            label = f"label=muster.node={self.node(n)}"
            out = podman("ps", "-a", "--format", "json", "--filter", label).stdout
            names += [
                c["Names"][0]
                for c in json.loads(out or "[]")
                if (c.get("Labels") or {}).get("muster.run-id") == str(run_id)
            ]
        return sorted(names)

    def leftovers(self) -> dict[str, list[str]]:
        """Everything of this stack still in Podman (empty lists when clean)."""
        containers = podman(
            "ps",
            "-a",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        containers += self.run_containers()
        networks = podman("network", "ls", "--format", "{{.Name}}").stdout.split()
        volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
        pods = podman("pod", "ls", "--format", "{{.Name}}").stdout.split()
        mine = (self.project, self.run_network)
        return {
            "containers": sorted(set(containers)),
            "networks": [n for n in networks if n.startswith(mine)],
            "volumes": [v for v in volumes if v.startswith(self.project)],
            "pods": [p for p in pods if p == self.pod],
        }

    def force_clean(self) -> None:
        """Remove everything of this stack, whatever state it is in."""
        with self.log.open("a") as f:
            f.write("force_clean\n")
        for _ in range(2):
            left = self.leftovers()
            if left["containers"]:
                podman("rm", "-f", "-t", "0", *left["containers"], check=False)
            if left["pods"]:
                podman("pod", "rm", "-f", *left["pods"], check=False)
            for network in left["networks"]:
                podman("network", "rm", "-f", network, check=False)
            if left["volumes"]:
                podman("volume", "rm", "-f", *left["volumes"], check=False)


def _check_preconditions() -> None:
    if not PODMAN_SOCKET.exists():
        pytest.fail("Podman API socket missing: run scripts/setup.sh first")
    if not (BIN / "podman-compose").exists():
        pytest.fail("podman-compose missing from the venv: run scripts/setup.sh")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose stack, up with three Ready nodes; torn down (and checked) at the end."""
    _check_preconditions()
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode != 0:
        pytest.fail(f"scripts/build-images.sh failed: {build.stdout}{build.stderr}")
    tag = f"c{secrets.token_hex(3)}"
    project = f"muster-test-{tag}"
    port = free_port()
    env = dict(os.environ)
    env.pop("COMPOSE_PROJECT_NAME", None)
    env.update(TEST_SETTINGS)
    env.update(
        MUSTER_PORT=str(port),
        MUSTER_RUN_NETWORK=f"{project}-runs",
        MUSTER_NODE_PREFIX=f"{tag}-",
        MUSTER_CONTROLPLANE_IMAGE=CP_IMAGE,
        MUSTER_AGENT_IMAGE=AGENT_IMAGE,
    )
    tmp = tmp_path_factory.mktemp("compose")
    s = Stack(tag, project, f"{project}-runs", port, env, tmp / "compose.log", tmp / "admin.json")
    try:
        s.compose("up", "-d")
        s.fetch_credentials()
        s.wait_ready([s.node(n) for n in SHORT_NODES])
        yield s
    finally:
        left = s.leftovers()
        if any(left.values()):  # the tests did not get to (or through) their own `down -v`
            s.save_logs()
            try:
                s.compose("down", "-v", timeout=120)
            except (AssertionError, subprocess.TimeoutExpired):
                pass
            s.force_clean()
        remaining = s.leftovers()
        assert not any(remaining.values()), f"the compose test left behind: {remaining}"
