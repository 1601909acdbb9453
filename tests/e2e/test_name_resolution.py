"""Bridge mode: a job resolves its workers' names from /etc/hosts entries the
agent adds (the workers' addresses on the run network), not through the
network's DNS, which stalls under churn on Podman 4.3."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import PYTHON

pytestmark = pytest.mark.podman

WORKER = "import socket, time; s = socket.socket(); s.bind(('', 7000)); s.listen(); time.sleep(300)"
JOB = r"""
import json, os
names = json.loads(os.environ["TYGER_WORKER_NODES"])
hosts = {}
for line in open("/etc/hosts"):
    parts = line.split()
    for name in parts[1:]:
        hosts[name] = parts[0]
for name in names:
    print("hosts-entry", name, hosts.get(name, "MISSING"), flush=True)
"""


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
    assert set(entries) == {f"run-{run_id}-worker-0", f"run-{run_id}-worker-1"}, logs
    assert all(ip.count(".") == 3 for ip in entries.values()), entries
    assert len(set(entries.values())) == 2  # each worker its own address
