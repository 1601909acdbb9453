"""muster across hosts: a control plane in the root namespace and one agent
per simulated host (its own network namespace and Podman), in host-port mode,
joined with join tokens over TLS. Each test leaves every host empty."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import BIN, Process, run_cli, start_process, wait_for
from tests.multihost.conftest import Bed, Host

PYTHON = "localhost/muster-python:latest"
TERMINAL = {"Succeeded", "Failed", "Canceled"}
# Short liveness, so partitions play out in seconds: NotReady after 3 s, Lost after 8 s
# (the bounds, 15 s and 60 s, are for the defaults of 10 s and 30 s).
HEARTBEAT, NOT_READY_AFTER, LOST_AFTER = 1, 3, 8
CP_ARGS = [
    "--heartbeat-interval", str(HEARTBEAT), "--node-not-ready-after", str(NOT_READY_AFTER),
    "--node-lost-after", str(LOST_AFTER), "--readiness-timeout", "60",
]  # fmt: skip

WORKER_SCRIPT = (
    "import http.server as h; h.HTTPServer(('', 7000), h.SimpleHTTPRequestHandler).serve_forever()"
)
JOB_SCRIPT = """
import json, os, socket, sys, time
time.sleep(float(os.environ.get("PAUSE", "0")))
nodes = json.loads(os.environ["TYGER_WORKER_NODES"])
addresses = json.loads(os.environ["TYGER_HTTP_WORKER_ENDPOINT_ADDRESSES"])
for name in nodes:
    print("resolved", name, socket.gethostbyname(name), flush=True)
for address in addresses:
    host, port = address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()
    print("connected", address, flush=True)
print("all", len(nodes), "workers reached", flush=True)
"""


@dataclass
class MultiCluster:
    """A control plane and agents on the bed's hosts."""

    bed: Bed
    cp: Process
    tmp: Path
    tag: str
    agents: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    flags: dict[str, list[str]] = field(default_factory=dict)
    agent_extra: list[str] = field(default_factory=list)  # more flags for every agent

    def node(self, host: Host) -> str:
        return f"{self.tag}-{host.name}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, server=self.cp, check=check, timeout=60)

    def start_agent(self, host: Host, pool: str | None = None) -> None:
        """Start (or, without a pool, restart) the agent of `host`, inside the host."""
        state = self.tmp / f"agent-{host.name}"
        if pool is not None:
            self.flags[host.name] = [
                "--node-name", self.node(host), "--pool", pool, "--cpus", "2",
                "--podman-url", host.url, "--network-mode", "host-port",
                "--advertise-address", host.address, "--port-range", "31000-31999",
                "--state-dir", str(state), "--ca-cert", str(self.cp.ca_cert),
                *self.agent_extra,
            ]  # fmt: skip
        join: list[str] = []
        if not (state / "node.crt").exists():
            token = self.cli("node", "join-token", "create", "--pool", pool or "x").stdout
            join = ["--join-token", token.strip()]
        log = open(self.tmp / f"agent-{host.name}.log", "a")
        self.agents[host.name] = host.popen(
            str(BIN / "muster-agent"), "--server", self.cp.address, *self.flags[host.name],
            *join, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop_agent(self, host: Host) -> None:
        proc = self.agents.pop(host.name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def nodes(self) -> dict[str, dict]:
        return {n["name"]: n for n in json.loads(self.cli("node", "list", "-o", "json").stdout)}

    def watch_status(
        self, host: Host, until: str, since: float, timeout: float
    ) -> dict[str, float]:
        """Polls the node of `host` until its status is `until`; returns each status seen
        and when it was first seen (seconds after `since`, a time.monotonic() value, taken
        when the listing that showed it had returned: an upper bound)."""
        seen: dict[str, float] = {}

        def reached() -> bool:
            status = self.nodes()[self.node(host)]["status"]
            seen.setdefault(status, time.monotonic() - since)
            return status == until

        wait_for(reached, timeout, f"node {self.node(host)} {until} (seen: {seen})", 0.2)
        return seen

    def wait_ready(self, *hosts: Host, timeout: float = 60) -> None:
        names = {self.node(h) for h in hosts}

        def ready() -> bool:
            nodes = self.nodes()
            return all(nodes.get(n, {}).get("status") == "Ready" for n in names)

        wait_for(ready, timeout, f"nodes {sorted(names)} Ready", 0.5)

    def codespecs(self) -> None:
        self.cli("codespec", "create", "mh-worker", "-k", "worker", "--image", PYTHON,
                 "--endpoint", "http=7000", "--cpu-request", "1",
                 "--command", "--", "python3", "-c", WORKER_SCRIPT)  # fmt: skip
        self.cli("codespec", "create", "mh-job", "--image", PYTHON,
                 "--command", "--", "python3", "-c", JOB_SCRIPT)  # fmt: skip

    def create_run(self, *args: str) -> int:
        return int(self.cli("run", "create", *args).stdout.strip())

    def run(self, run_id: int) -> dict:
        return json.loads(self.cli("run", "show", str(run_id), "-o", "json").stdout)

    def wait_run(self, run_id: int, timeout: float = 120, statuses=TERMINAL) -> dict:
        def done() -> dict | None:
            run = self.run(run_id)
            return run if run["status"] in statuses else None

        return wait_for(done, timeout, f"run {run_id} in {sorted(statuses)}", 0.5)

    def logs(self, run_id: int) -> str:
        return self.cli("run", "logs", str(run_id)).stdout

    def containers(self, host: Host) -> list[str]:
        out = host.podman("ps", "-a", "--filter", "label=muster.run-id", "--format", "{{.Names}}")
        return out.stdout.split()

    def wait_empty(self, *hosts: Host, timeout: float = 60) -> None:
        wait_for(
            lambda: not any(self.containers(h) for h in hosts),
            timeout,
            f"no run containers on {[h.name for h in hosts]}",
            0.5,
        )

    def close(self) -> None:
        for host in self.bed.hosts:
            self.stop_agent(host)
        self.cp.stop()
        for host in self.bed.hosts:
            ids = host.podman("ps", "-aq", "--filter", "label=muster.run-id", check=False)
            if ids.stdout.split():
                host.podman("rm", "-f", "-t", "0", *ids.stdout.split(), check=False)


@contextlib.contextmanager
def three_hosts(
    bed: Bed, tmp_path: Path, agent_extra: Sequence[str] = ()
) -> Iterator[MultiCluster]:
    """A fresh control plane on the bed's bridge address; agents (with `agent_extra`):
    h1 pool job, h2 and h3 pool work (2 CPUs each, so 3 one-CPU workers need both).
    Everything is stopped and every run container removed afterwards."""
    cp = start_process(tmp_path / "cp" / "cp.db", extra=CP_ARGS, host=bed.cp_address)
    tag = f"m{secrets.token_hex(2)}"
    cluster = MultiCluster(bed, cp, tmp_path, tag, agent_extra=list(agent_extra))
    try:
        h1, h2, h3 = bed.hosts[:3]
        cluster.start_agent(h1, "job")
        cluster.start_agent(h2, "work")
        cluster.start_agent(h3, "work")
        cluster.wait_ready(h1, h2, h3)
        cluster.codespecs()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(bed: Bed, tmp_path: Path) -> Iterator[MultiCluster]:
    """three_hosts() for one test."""
    with three_hosts(bed, tmp_path) as cluster:
        yield cluster


def worker_run(cluster: MultiCluster, workers: int = 3, *flags: str) -> int:
    return cluster.create_run(
        "-c", "mh-job", "--node-pool", "job", "--worker-codespec", "mh-worker",
        "--worker-replicas", str(workers), "--worker-node-pool", "work", *flags,
    )  # fmt: skip


def test_cross_host_run_resolves_every_name_and_reaches_every_address(
    cluster: MultiCluster,
) -> None:
    h1, h2, h3 = cluster.bed.hosts[:3]
    run_id = worker_run(cluster)
    run = cluster.wait_run(run_id)
    cluster.wait_empty(h1, h2, h3)  # logs are complete once the containers are gone
    logs = cluster.logs(run_id)
    assert run["status"] == "Succeeded", (run, logs)
    workers = [r for r in run["replicas"] if r["role"] == "worker"]
    assert {r["nodeName"] for r in workers} == {cluster.node(h2), cluster.node(h3)}
    ips = {cluster.node(h): h.address for h in (h2, h3)}
    for r in workers:
        name = f"run-{run_id}-worker-{r.get('index', 0)}"
        assert f"resolved {name} {ips[r['nodeName']]}" in logs, logs
        address = r["endpointAddresses"]["http"]
        assert address.startswith(ips[r["nodeName"]] + ":") and f"connected {address}" in logs
    assert "all 3 workers reached" in logs
    assert [r["nodeName"] for r in run["replicas"] if r["role"] == "job"] == [cluster.node(h1)]
    cluster.wait_empty(h1, h2, h3)


def test_partitioned_worker_host_fails_only_its_run_and_fences_itself(
    cluster: MultiCluster,
) -> None:
    h1, h2, h3 = cluster.bed.hosts[:3]
    cluster.cli("node", "cordon", cluster.node(h2))  # the worker goes to h3
    cluster.cli("codespec", "create", "mh-sleeper", "--image", PYTHON,
                "--command", "--", "python3", "-c", "import time; time.sleep(600)")  # fmt: skip
    doomed = cluster.create_run(
        "-c", "mh-sleeper", "--node-pool", "job", "--worker-codespec", "mh-worker",
        "--worker-replicas", "1", "--worker-node-pool", "work",
    )  # fmt: skip
    cluster.wait_run(doomed, statuses={"Running"}, timeout=60)
    cluster.cli("node", "uncordon", cluster.node(h2))
    cluster.cli("codespec", "create", "mh-short", "--image", PYTHON,
                "--command", "--", "python3", "-c", "import time; time.sleep(20)")  # fmt: skip
    survivor = cluster.create_run("-c", "mh-short", "--node-pool", "job")
    assert cluster.containers(h3)
    assert cluster.nodes()[cluster.node(h3)]["status"] == "Ready"
    cut_at = time.monotonic()
    cluster.bed.cut(h3)
    try:
        # Ready -> NotReady -> Lost, each within its configured period plus one heartbeat
        # and some slack for the 0.5 s tick and the listing (and within the 15 s
        # and 60 s, which are for the default periods of 10 s and 30 s).
        seen = cluster.watch_status(h3, "Lost", cut_at, timeout=60)
        assert "NotReady" in seen, seen  # seen on the way, not skipped
        assert seen["NotReady"] <= min(15, NOT_READY_AFTER + HEARTBEAT + 3), seen
        assert seen["NotReady"] < seen["Lost"] <= min(60, LOST_AFTER + HEARTBEAT + 3), seen
        run = cluster.wait_run(doomed, timeout=60 - (time.monotonic() - cut_at))
        assert run["status"] == "Failed" and cluster.node(h3) in run["statusReason"], run
        # Fenced by its own agent (Lost period plus keepalive detection), before the heal.
        cluster.wait_empty(h3, timeout=LOST_AFTER + 30 - (time.monotonic() - cut_at))
        assert cluster.wait_run(survivor, timeout=60)["status"] == "Succeeded"
        cluster.wait_empty(h1)  # the doomed run's job is torn down: its record is final
        run = cluster.run(doomed)
    finally:
        cluster.bed.heal(h3)
    cluster.wait_ready(h3)  # re-registered: whatever it had to report has been reported
    after = cluster.run(doomed)  # nothing late changed the decision
    decision = ("status", "statusReason", "finishedAt")
    assert [after[k] for k in decision] == [run[k] for k in decision], (run, after)
    # Reused: a run placed on h3 alone (h2 cordoned) succeeds there.
    cluster.cli("node", "cordon", cluster.node(h2))
    again = worker_run(cluster, 2)
    done = cluster.wait_run(again)
    cluster.cli("node", "uncordon", cluster.node(h2))
    assert done["status"] == "Succeeded", cluster.logs(again)
    workers = [r["nodeName"] for r in done["replicas"] if r["role"] == "worker"]
    assert workers == [cluster.node(h3)] * 2, done
    cluster.wait_empty(h1, h2, h3)


def test_agent_and_control_plane_restarts_mid_run_create_nothing_twice(
    cluster: MultiCluster,
) -> None:
    h1, h2, h3 = cluster.bed.hosts[:3]
    since = time.time()
    cluster.cli("codespec", "create", "mh-slow", "--image", PYTHON, "-e", "PAUSE=12",
                "--command", "--", "python3", "-c", JOB_SCRIPT)  # fmt: skip
    run_id = cluster.create_run(
        "-c", "mh-slow", "--node-pool", "job", "--worker-codespec", "mh-worker",
        "--worker-replicas", "2", "--worker-node-pool", "work",
    )  # fmt: skip
    cluster.wait_run(run_id, statuses={"Running"}, timeout=60)
    cluster.stop_agent(h2)
    cluster.start_agent(h2)
    cluster.cp = cluster.cp.restart()
    run = cluster.wait_run(run_id)
    assert run["status"] == "Succeeded", (run, cluster.logs(run_id))
    creates = {h.name: cluster.bed.events(h, "create", since) for h in (h1, h2, h3)}
    starts = {h.name: cluster.bed.events(h, "start", since) for h in (h1, h2, h3)}
    assert creates == starts == {h1.name: 1, h2.name: 1, h3.name: 1}, (creates, starts)
    cluster.wait_empty(h1, h2, h3)


def test_rebooted_worker_host_fails_the_run_and_starts_nothing_twice(
    cluster: MultiCluster,
) -> None:
    h1, h2, h3 = cluster.bed.hosts[:3]
    since = time.time()
    cluster.cli("node", "cordon", cluster.node(h3))
    cluster.cli("codespec", "create", "mh-sleeper", "--image", PYTHON,
                "--command", "--", "python3", "-c", "import time; time.sleep(600)")  # fmt: skip
    run_id = cluster.create_run(
        "-c", "mh-sleeper", "--node-pool", "job", "--worker-codespec", "mh-worker",
        "--worker-replicas", "1", "--worker-node-pool", "work",
    )  # fmt: skip
    cluster.wait_run(run_id, statuses={"Running"}, timeout=60)
    cluster.bed.reboot(h2)  # kills its agent too, like a power loss
    cluster.agents.pop(h2.name, None)
    cluster.start_agent(h2)  # what a boot-time service would do
    run = cluster.wait_run(run_id, timeout=60)
    assert run["status"] == "Failed" and "reset by a restart of its host" in run["statusReason"]
    cluster.wait_empty(h1, h2, h3)
    assert cluster.bed.events(h2, "start", since) == 1  # the worker ran once, never again
    cluster.cli("node", "uncordon", cluster.node(h3))
