"""The control plane as a process with `--db postgresql://...`, real agents
on real Podman, driven through the CLI: a distributed run succeeds, its logs
read back, and everything is still there after a control plane restart."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import EXAMPLES

pytestmark = pytest.mark.podman


def test_a_distributed_run_with_the_store_in_postgresql(make_cluster, postgres_url) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]}, cp_args=["--db", postgres_url])
    assert not (cluster.tmp / "cp.db").exists()  # no SQLite file beside it
    cluster.codespec("hello-worker", EXAMPLES / "worker.yaml")
    cluster.codespec("hello-job", EXAMPLES / "job.yaml")
    run_id = cluster.create_run("-f", str(EXAMPLES / "run.yaml"))
    run = cluster.wait_run(run_id)
    assert run["status"] == "Succeeded", run
    cluster.wait_no_containers(run_id)
    logs = cluster.cli("run", "logs", str(run_id), check=True).stdout
    assert "[job]" in logs

    cluster.restart_control_plane()  # the same database: nothing forgotten
    assert cluster.run_json(run_id)["status"] == "Succeeded"
    assert cluster.cli("run", "logs", str(run_id), check=True).stdout == logs
    listed = cluster.cli("codespec", "list", check=True).stdout
    assert "hello-worker" in listed and "hello-job" in listed
    cluster.wait_nodes(2)  # the agents came back to the new process
    again = cluster.create_run("-f", str(EXAMPLES / "run.yaml"))
    assert again > run_id
    assert cluster.wait_run(again)["status"] == "Succeeded"
