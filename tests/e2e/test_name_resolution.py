"""Bridge mode: a job resolves its workers' names from /etc/hosts entries the
agent adds (the workers' addresses on the run network, as `podman inspect`
shows them), not through the network's DNS, which stalls under churn on
Podman 4.3."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import PYTHON, podman

pytestmark = pytest.mark.podman

WORKER = "import socket, time; s = socket.socket(); s.bind(('', 7000)); s.listen(); time.sleep(300)"
JOB = r"""
import json, os, sys, time
names = json.loads(os.environ["TYGER_WORKER_NODES"])
hosts = {}
for line in open("/etc/hosts"):
    parts = line.split()
    for name in parts[1:]:
        hosts[name] = parts[0]
for name in names:
    print("hosts-entry", name, hosts.get(name, "MISSING"), flush=True)
deadline = time.monotonic() + 120  # the test inspects the workers, then says go
while not os.path.exists("/tmp/go"):
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.1)
"""


def network_ip(container: str, network: str) -> str:
    """The container's address on `network`, as Podman has it."""
    out = podman("inspect", container, "--format", "{{json .NetworkSettings.Networks}}").stdout
    return json.loads(out)[network]["IPAddress"]


def test_job_gets_hosts_entries_for_every_worker(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]})
    cluster.cli("codespec", "create", "w", "-k", "worker", "--image", PYTHON,
                "--endpoint", "tcp=7000", "--command", "--", "python3", "-c", WORKER,
                check=True)  # fmt: skip
    cluster.cli("codespec", "create", "j", "--image", PYTHON,
                "--command", "--", "python3", "-c", JOB, check=True)  # fmt: skip
    run_id = cluster.create_run(
        "-c", "j", "--node-pool", "cpu", "--worker-codespec", "w",
        "--worker-replicas", "2", "--worker-node-pool", "gpu",
    )  # fmt: skip

    # While the job waits: each worker's address on the run network, from Podman.
    def job_running() -> dict | None:
        run = cluster.run_json(run_id)
        job = [r for r in run.get("replicas", []) if r["role"] == "job"]
        return run if job and job[0].get("state") == "running" else None

    running = wait_for(job_running, 60, f"run {run_id}'s job running", 0.3)
    (job,) = [r["containerName"] for r in running["replicas"] if r["role"] == "job"]
    ips = {
        r["hostname"]: network_ip(r["containerName"], cluster.network)
        for r in running["replicas"]
        if r["role"] == "worker"
    }
    podman("exec", job, "touch", "/tmp/go")
    run = cluster.wait_run(run_id)
    cluster.wait_no_containers(run_id)  # logs are complete once the containers are gone
    logs = cluster.cli("run", "logs", str(run_id), check=True).stdout
    assert run["status"] == "Succeeded", (run, logs)
    entries = {}
    for line in logs.splitlines():
        words = line.split()
        if "hosts-entry" in words:
            at = words.index("hosts-entry")
            entries[words[at + 1]] = words[at + 2]
    assert set(ips) == {f"run-{run_id}-worker-0", f"run-{run_id}-worker-1"}, running
    assert entries == ips, (entries, ips, logs)  # each worker's own run-network address
    assert len(set(ips.values())) == 2 and all(ip.count(".") == 3 for ip in ips.values()), ips
