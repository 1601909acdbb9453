"""Distributed runs end to end on real Podman (issue 3): placement by pool,
endpoint readiness, release with discovery variables, outcomes and teardown."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import BUSYBOX, EXAMPLES, podman, wait_for

pytestmark = pytest.mark.podman


def hello(cluster) -> None:
    cluster.codespec("hello-worker", EXAMPLES / "worker.yaml")
    cluster.codespec("hello-job", EXAMPLES / "job.yaml")


def test_three_workers_in_gpu_pool_job_in_cpu_pool(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]})
    hello(cluster)
    run_id = cluster.create_run("-f", str(EXAMPLES / "run.yaml"))
    run = cluster.wait_run(run_id)
    assert run["status"] == "Succeeded", run
    nodes = {(r["role"], r.get("index", 0)): r["nodeName"] for r in run["replicas"]}
    assert nodes == {
        ("worker", 0): cluster.node("b"),
        ("worker", 1): cluster.node("b"),
        ("worker", 2): cluster.node("b"),
        ("job", 0): cluster.node("a"),
    }
    job = next(r for r in run["replicas"] if r["role"] == "job")
    assert job.get("exitCode", 0) == 0
    events = [e["message"] for e in run["events"]]
    assert events.index("job released") > max(events.index(f"worker {i} ready") for i in range(3))
    assert "startedAt" in run and "finishedAt" in run
    cluster.wait_no_containers(run_id)
    wait_for(
        lambda: {r["state"] for r in cluster.run_json(run_id)["replicas"]} == {"removed"},
        10,
        "the run to record every container as removed",
    )
    shown = cluster.cli("run", "show", str(run_id), check=True).stdout
    assert shown.startswith(f"run {run_id}: Succeeded")
    assert f"worker-2  {cluster.node('b')}  removed  yes" in shown


def test_host_port_mode(make_cluster, tmp_path) -> None:
    # On one machine, the host side of a project network stands in for another
    # machine's address: containers reach it, and traffic stays on this host.
    network = f"muster-test-hp-{tmp_path.name[-6:]}".replace("_", "-")
    podman("network", "create", network)
    try:
        info = json.loads(podman("network", "inspect", network).stdout)[0]
        gateway = info["subnets"][0]["gateway"]
        cluster = make_cluster(
            {"a": ["cpu"], "b": ["gpu"]},
            agent_extra=["--network-mode", "host-port", "--advertise-address", gateway],
            network=network,
        )
        hello(cluster)
        run_id = cluster.create_run("-f", str(EXAMPLES / "run.yaml"))
        run = cluster.wait_run(run_id)
        assert run["status"] == "Succeeded", run
        addresses = [
            r["endpointAddresses"]["echo"] for r in run["replicas"] if r["role"] == "worker"
        ]
        assert all(a.startswith(f"{gateway}:") and not a.endswith(":7000") for a in addresses)
        assert len(set(addresses)) == 3
        cluster.wait_no_containers(run_id)
    finally:
        podman("network", "rm", "-f", network, check=False)


def test_job_exit_code_fails_the_run(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("three", "echo bye; exit 3")
    run_id = cluster.create_run("-c", "three")
    run = cluster.wait_run(run_id)
    assert (run["status"], run["statusReason"]) == ("Failed", "job exited with code 3")
    cluster.wait_no_containers(run_id)
    exec_result = cluster.cli("run", "exec", "-c", "three")
    assert exec_result.returncode == 1
    assert "failed: job exited with code 3" in exec_result.stderr


def test_worker_killed_while_job_waits(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]})
    cluster.codespec("hello-worker", EXAMPLES / "worker.yaml")
    cluster.shell_codespec("waiter", "sleep 300")
    run_id = cluster.create_run(
        "-c",
        "waiter",
        "--node-pool",
        "cpu",
        "--worker-codespec",
        "hello-worker",
        "--worker-replicas",
        "2",
        "--worker-node-pool",
        "gpu",
    )
    running = cluster.wait_run(run_id, statuses={"Running"})
    worker = next(r for r in running["replicas"] if r["role"] == "worker" and r.get("index") == 1)
    assert worker["containerName"].endswith(f"-run-{run_id}-worker-1")  # muster-<cluster>-run-...
    podman("kill", worker["containerName"])
    run = cluster.wait_run(run_id)
    assert (run["status"], run["statusReason"]) == ("Failed", "worker 1 exited with code 137")
    cluster.wait_no_containers(run_id)


def test_missing_image_fails_fast_naming_image_and_node(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.cli("codespec", "create", "ghost", "--image", "localhost/no-such-image:1", check=True)
    run_id = cluster.create_run("-c", "ghost")
    run = cluster.wait_run(run_id, timeout=15)
    assert run["status"] == "Failed"
    assert "localhost/no-such-image:1" in run["statusReason"]
    assert cluster.node("a") in run["statusReason"]
    cluster.wait_no_containers(run_id)


def test_endpoint_never_opens_fails_after_readiness_timeout(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]}, cp_args=["--readiness-timeout", "4"])
    cluster.mute_worker("mute")
    cluster.shell_codespec("j", "true")
    run_id = cluster.create_run("-c", "j", "--worker-codespec", "mute")
    run = cluster.wait_run(run_id, timeout=30)
    assert run["status"] == "Failed"
    assert run["statusReason"].startswith("worker 0 was not ready within 4s")
    assert "'http'" in run["statusReason"] and "8080" in run["statusReason"]
    cluster.wait_no_containers(run_id)


def test_waits_for_capacity_then_succeeds(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]}, wait=False)
    cluster.stop_agent("b")
    cluster.start_agent("b", ["gpu"], "--cpus", "1")
    cluster.wait_nodes(2)
    cluster.cli(
        "codespec",
        "create",
        "fat",
        "-k",
        "worker",
        "--image",
        BUSYBOX,
        "--cpu-request",
        "1",
        "--command",
        "--",
        "sleep",
        "300",
        check=True,
    )
    cluster.shell_codespec("brief", "sleep 3")
    args = [
        "-c",
        "brief",
        "--node-pool",
        "cpu",
        "--worker-codespec",
        "fat",
        "--worker-node-pool",
        "gpu",
    ]
    first = cluster.create_run(*args)
    second = cluster.create_run(*args)
    wait_for(
        lambda: (
            cluster.run_json(second).get("statusReason")
            == "waiting for capacity in pool gpu: 0 of 1 workers placed"
        ),
        20,
        "the second run to wait for capacity",
    )
    assert cluster.run_json(second)["status"] == "Pending"
    assert cluster.wait_run(first)["status"] == "Succeeded"
    assert cluster.wait_run(second)["status"] == "Succeeded"
    cluster.wait_no_containers(second)


def test_impossible_runs_are_rejected_at_creation(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]}, wait=False)
    cluster.stop_agent("b")
    cluster.start_agent("b", ["gpu"], "--cpus", "2")
    cluster.wait_nodes(2)
    hello(cluster)
    cluster.cli(
        "codespec",
        "create",
        "capped",
        "-k",
        "worker",
        "--image",
        BUSYBOX,
        "--max-replicas",
        "2",
        check=True,
    )
    cluster.cli(
        "codespec",
        "create",
        "huge",
        "-k",
        "worker",
        "--image",
        BUSYBOX,
        "--cpu-request",
        "64",
        check=True,
    )
    cases = {
        (
            "--worker-codespec",
            "hello-worker",
            "--worker-node-pool",
            "tpu",
        ): "unknown node pool 'tpu'; known pools: cpu, gpu",
        ("--worker-codespec", "capped", "--worker-replicas", "3"): "at most 2 (maxReplicas)",
        ("--worker-codespec", "huge", "--worker-node-pool", "gpu"): "more than any node",
        ("--worker-codespec", "hello-job"): "is a job codespec and cannot be used as the worker",
    }
    for extra, fragment in cases.items():
        result = cluster.cli("run", "create", "-c", "hello-job", *extra)
        assert result.returncode == 1, extra
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    listed = json.loads(cluster.cli("run", "list", "-o", "json", check=True).stdout)
    assert listed == []
