"""A real cluster for end-to-end tests: a `muster-controlplane` process, several
`muster-agent` processes driving the host's Podman, and a test network.

Everything a test starts is removed in teardown, even when the test fails:
agent and control plane processes (by PID), containers carrying the test's
node labels, and the test network.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from muster.v1 import run_pb2, run_pb2_grpc
from tests.conftest import (
    BIN,
    REPO,
    Process,
    isolated_env,
    run_cli,
    secure_test_channel,
    start_process,
    wait_for,
)

EXAMPLES = REPO / "examples" / "distributed"
PODMAN_SOCKET = Path("/run/podman/podman.sock")
BUSYBOX = "localhost/muster-busybox:latest"
PYTHON = "localhost/muster-python:latest"
TERMINAL = {"Succeeded", "Failed", "Canceled"}


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The podman CLI (used by tests to inspect and clean up, never by the product)."""
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=120
    )


@dataclass
class Cluster:
    """A control plane and its agents for one test."""

    tmp: Path
    cp: Process
    network: str
    tag: str
    cp_args: list[str]
    agents: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    agent_args: dict[str, list[str]] = field(default_factory=dict)
    agent_pools: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return self.cp.address

    def node(self, short: str) -> str:
        """Node names are unique per test so labels find exactly this test's containers."""
        return f"{self.tag}-{short}"

    def join_token(self, *pools: str) -> str:
        """A single-use join token for these pools, made by the admin."""
        flags = [a for p in pools for a in ("--pool", p)]
        return self.cli("node", "join-token", "create", *flags, check=True).stdout.strip()

    def agent_security(self, name: str, pools: list[str]) -> list[str]:
        """Flags that give an agent its node identity: a join token on the
        first start, the stored certificate afterwards."""
        if not self.cp.secure:
            return ["--insecure"]
        state = self.tmp / f"agent-state-{name}"
        flags = ["--state-dir", str(state), "--ca-cert", str(self.cp.ca_cert)]
        if not (state / "node.crt").exists():
            flags += ["--join-token", self.join_token(*(pools or ["default"]))]
        return flags

    def start_agent(self, short: str, pools: list[str] | None = None, *extra: str) -> None:
        """Start an agent; without pools, restart it with the flags it had before."""
        name = self.node(short)
        if pools is None:
            args = self.agent_args[name]
        else:
            pool_flags = [a for p in pools for a in ("--pool", p)]
            args = ["--node-name", name, "--network", self.network, *pool_flags, *extra]
            self.agent_pools[name] = pools
        self.agent_args[name] = args
        security = self.agent_security(name, self.agent_pools.get(name, []))
        log = open(self.tmp / f"agent-{name}.log", "a")
        self.agents[name] = subprocess.Popen(
            [str(BIN / "muster-agent"), "--server", self.server, *security, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop_agent(self, short: str, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(self.node(short))
        proc.send_signal(sig)
        proc.wait(timeout=20)

    def wait_nodes(self, count: int, timeout: float = 30) -> list[dict]:
        def ready() -> list[dict] | None:
            nodes = [n for n in self.nodes() if n["status"] == "Ready"]
            return nodes if len(nodes) >= count else None

        return wait_for(ready, timeout, f"{count} ready nodes")

    def nodes(self) -> list[dict]:
        out = self.cli("node", "list", "-o", "json", check=True).stdout
        return [n for n in json.loads(out) if n["name"].startswith(self.tag)]

    def cli(self, *args: str, check: bool = False, timeout: float = 120):
        return run_cli(*args, server=self.cp, check=check, timeout=timeout)

    def channel(self) -> grpc.Channel:
        """A gRPC channel as the admin (TLS and token, or plaintext when insecure)."""
        return secure_test_channel(self.cp)

    def shell_codespec(self, name: str, script: str, *flags: str, image: str = BUSYBOX) -> None:
        """A codespec whose command is `sh -c SCRIPT` (job unless flags say -k worker)."""
        self.cli(
            "codespec",
            "create",
            name,
            "--image",
            image,
            *flags,
            "--command",
            "--",
            "sh",
            "-c",
            script,
            check=True,
        )

    def mute_worker(self, name: str) -> None:
        """A worker codespec declaring endpoint http=8080 that never listens."""
        self.cli(
            "codespec",
            "create",
            name,
            "-k",
            "worker",
            "--image",
            BUSYBOX,
            "--endpoint",
            "http=8080",
            "--command",
            "--",
            "sleep",
            "300",
            check=True,
        )

    def follow_logs(self, run_id: int, during: Callable[[], None] = lambda: None) -> list[str]:
        """`muster run logs -f`: the first line, then `during()`, then the rest until it ends."""
        follower = subprocess.Popen(
            [str(BIN / "muster"), "--server", self.server, "run", "logs", "-f", str(run_id)],
            stdout=subprocess.PIPE,
            text=True,
            env={**isolated_env(), **self.cp.env()},
        )
        try:
            assert follower.stdout is not None
            lines = [follower.stdout.readline().rstrip("\n")]
            during()
            lines += follower.stdout.read().splitlines()
            assert follower.wait(timeout=60) == 0
            return lines
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()

    def codespec(self, name: str, file: str | Path, *flags: str) -> None:
        self.cli("codespec", "create", name, "-f", str(file), *flags, check=True)

    def get_run(self, run_id: int) -> run_pb2.Run:
        with self.channel() as ch:
            return (
                run_pb2_grpc.RunServiceStub(ch)
                .GetRun(run_pb2.GetRunRequest(run_id=run_id), timeout=10)
                .run
            )

    def run_json(self, run_id: int) -> dict:
        return json.loads(self.cli("run", "show", str(run_id), "-o", "json", check=True).stdout)

    def wait_run(self, run_id: int, timeout: float = 90, statuses=TERMINAL) -> dict:
        def done() -> dict | None:
            run = self.run_json(run_id)
            return run if run["status"] in statuses else None

        return wait_for(done, timeout, f"run {run_id} to reach {sorted(statuses)}", 0.3)

    def create_run(self, *args: str) -> int:
        out = self.cli("run", "create", *args, check=True).stdout
        return int(out.strip())

    def containers(self, run_id: int | None = None) -> list[dict]:
        """This test's containers (by node label), optionally of one run."""
        found = []
        for name in self.agent_args:
            out = podman("ps", "-a", "--format", "json", "--filter", f"label=muster.node={name}")
            found += json.loads(out.stdout or "[]")
        if run_id is not None:
            found = [c for c in found if c["Labels"].get("muster.run-id") == str(run_id)]
        return found

    def wait_no_containers(self, run_id: int, timeout: float = 30) -> None:
        wait_for(
            lambda: not self.containers(run_id),
            timeout,
            f"every container of run {run_id} to be removed",
        )

    def restart_control_plane(self) -> None:
        self.cp = self.cp.restart()

    def close(self) -> None:
        for name in list(self.agents):
            proc = self.agents.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.cp.stop()
        for name in self.agent_args:
            ids = podman("ps", "-aq", "--filter", f"label=muster.node={name}").stdout.split()
            if ids:
                podman("rm", "-f", "-t", "0", *ids, check=False)
        podman("network", "rm", "-f", self.network, check=False)


@pytest.fixture(scope="session")
def podman_ready() -> None:
    """The Podman API socket and the test images must exist (scripts/setup.sh makes them)."""
    if not PODMAN_SOCKET.exists():
        pytest.fail("Podman API socket missing: run scripts/setup.sh first")
    for image in ("localhost/muster-python:latest", "localhost/muster-busybox:latest"):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"test image {image} missing: run scripts/images.sh")


CP_TEST_ARGS = [
    "--readiness-timeout",
    "20",
    "--heartbeat-interval",
    "1",
    "--node-not-ready-after",
    "3",
    "--node-lost-after",
    "6",
]


@pytest.fixture
def make_cluster(tmp_path: Path, podman_ready: None) -> Iterator[Callable[..., Cluster]]:
    """Factory: make_cluster({"a": ["cpu"], "b": ["gpu"]}, cp_args=[...], agent_args=[...])."""
    made: list[Cluster] = []

    def make(
        agents: dict[str, list[str]],
        cp_args: list[str] | None = None,
        agent_extra: list[str] | None = None,
        wait: bool = True,
        network: str | None = None,
    ) -> Cluster:
        args = CP_TEST_ARGS + (cp_args or [])
        tag = f"t{secrets.token_hex(3)}"
        process = start_process(tmp_path / "cp.db", extra=args)
        cluster = Cluster(tmp_path, process, network or f"muster-test-{tag}", tag, args)
        made.append(cluster)
        for short, pools in agents.items():
            cluster.start_agent(short, pools, *(agent_extra or []))
        if wait:
            cluster.wait_nodes(len(agents))
        return cluster

    yield make
    for cluster in made:
        cluster.close()
