"""Following and steering runs on real Podman (issue 4): merged logs that
outlive containers and control plane restarts, follow, a chatty container,
cancel, timeouts, exec and watch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, isolated_env
from tests.e2e.conftest import EXAMPLES, PYTHON, wait_for

pytestmark = pytest.mark.podman


def test_merged_logs_outlive_containers_and_restarts(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]})
    cluster.shell_codespec("greeter", "echo hello-from-worker; sleep 300", "-k", "worker")
    cluster.shell_codespec("hello", "sleep 2; echo hello-from-job")
    run_id = cluster.create_run(
        "-c",
        "hello",
        "--node-pool",
        "cpu",
        "--worker-codespec",
        "greeter",
        "--worker-replicas",
        "2",
        "--worker-node-pool",
        "gpu",
    )
    assert cluster.wait_run(run_id)["status"] == "Succeeded"
    cluster.wait_no_containers(run_id)

    def logs(*args: str) -> list[str]:
        return cluster.cli("run", "logs", str(run_id), *args, check=True).stdout.splitlines()

    merged = logs()
    assert sorted(merged[:2]) == ["[worker-0] hello-from-worker", "[worker-1] hello-from-worker"]
    assert merged[2:] == ["[job] hello-from-job"]
    cluster.restart_control_plane()
    assert logs() == merged
    assert logs("--tail", "1") == ["[job] hello-from-job"]
    stamped = logs("--timestamps")
    pattern = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z \[(job|worker-\d)\] hello-from-\w+$"
    assert len(stamped) == 3 and all(re.match(pattern, line) for line in stamped)
    job_time = stamped[2].split()[0]
    assert logs("--since", job_time) == ["[job] hello-from-job"]


def test_follow_receives_lines_as_produced_and_ends_with_the_run(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("ticker", "for i in $(seq 1 12); do echo tick-$i; sleep 0.5; done")
    run_id = cluster.create_run("-c", "ticker")
    statuses: list[str] = []
    lines = cluster.follow_logs(
        run_id, during=lambda: statuses.append(cluster.run_json(run_id)["status"])
    )
    first, rest = lines[0], lines[1:]
    status_at_first_line = statuses[0]
    assert first == "tick-1"
    assert status_at_first_line in ("Pending", "Running")  # printed while it ran
    assert [first, *rest] == [f"tick-{i}" for i in range(1, 13)]
    assert cluster.run_json(run_id)["status"] == "Succeeded"


def test_a_hundred_thousand_lines_arrive_complete_and_in_order(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.cli(
        "codespec",
        "create",
        "chatty",
        "--image",
        PYTHON,
        "--command",
        "--",
        "python3",
        "-c",
        "import sys\nfor i in range(100000): sys.stdout.write(f'line {i}\\n')",
        check=True,
    )
    started = time.monotonic()
    run_id = cluster.create_run("-c", "chatty")
    assert cluster.wait_run(run_id, timeout=120)["status"] == "Succeeded"
    cluster.wait_no_containers(run_id, timeout=60)
    shipped = time.monotonic() - started
    out = cluster.cli("run", "logs", str(run_id), check=True, timeout=120).stdout.splitlines()
    assert out == [f"line {i}" for i in range(100_000)]
    print(f"\n100,000 lines: run to removed {shipped:.1f}s ({100_000 / shipped:,.0f} lines/s)")


def test_cancel_running_and_pending_runs(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"], "b": ["gpu"]}, cp_args=["--readiness-timeout", "300"])
    cluster.codespec("hello-worker", EXAMPLES / "worker.yaml")
    cluster.shell_codespec("sleeper", "sleep 300")
    running = cluster.create_run(
        "-c",
        "sleeper",
        "--node-pool",
        "cpu",
        "--worker-codespec",
        "hello-worker",
        "--worker-replicas",
        "2",
        "--worker-node-pool",
        "gpu",
    )
    cluster.wait_run(running, statuses={"Running"})
    assert cluster.cli("run", "cancel", str(running), check=True).stdout == (
        f"run {running} canceled\n"
    )
    assert cluster.run_json(running)["status"] == "Canceled"
    cluster.wait_no_containers(running, timeout=10)

    cluster.mute_worker("mute")
    pending = cluster.create_run("-c", "sleeper", "--worker-codespec", "mute")
    wait_for(lambda: cluster.containers(pending), 20, "the pending run's worker container")
    assert cluster.run_json(pending)["status"] == "Pending"
    cluster.cli("run", "cancel", str(pending), check=True)
    assert cluster.run_json(pending)["status"] == "Canceled"
    cluster.wait_no_containers(pending, timeout=10)
    again = cluster.cli("run", "cancel", str(pending))
    assert again.returncode == 1 and "already finished" in again.stderr
    assert cluster.run_json(pending)["status"] == "Canceled"


def test_timeout_fails_and_tears_down(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("sleeper", "sleep 300")
    run_id = cluster.create_run("-c", "sleeper", "--timeout", "5")
    run = cluster.wait_run(run_id, timeout=30)
    assert run["status"] == "Failed"
    assert "timed out after 5s" in run["statusReason"]
    cluster.wait_no_containers(run_id, timeout=10)


def test_exec_with_logs_and_watch(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("ok", "echo all-good")
    cluster.shell_codespec("bad", "echo about-to-fail; exit 4")
    good = cluster.cli("run", "exec", "-c", "ok", "--logs")
    # logs go to stderr, as in Tyger (stdout is for the run's output buffer)
    assert good.returncode == 0 and "all-good" in good.stderr.splitlines()
    bad = cluster.cli("run", "exec", "-c", "bad", "--logs")
    assert bad.returncode == 1 and "about-to-fail" in bad.stderr.splitlines()
    assert re.search(r"run \d+ failed: job exited with code 4", bad.stderr)
    as_json = cluster.cli("run", "exec", "-c", "ok", "-o", "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "Succeeded"

    run_id = cluster.create_run("-c", "bad")
    watched = cluster.cli("run", "watch", str(run_id))
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[-1] == (f"run {run_id}: Failed - job exited with code 4")


def test_follow_survives_a_control_plane_restart(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("ticker", "for i in $(seq 1 12); do echo tick-$i; sleep 0.5; done")
    run_id = cluster.create_run("-c", "ticker")
    # the follower reconnects by itself after the restart
    lines = cluster.follow_logs(run_id, during=cluster.restart_control_plane)
    assert lines == [f"tick-{i}" for i in range(1, 13)]  # every line, none twice
    assert cluster.wait_run(run_id)["status"] == "Succeeded"


def test_ctrl_c_with_cancel_on_exit_cancels_the_run(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.shell_codespec("sleeper", "sleep 300")
    proc = subprocess.Popen(
        [
            str(BIN / "muster"),
            "--server",
            cluster.server,
            "run",
            "exec",
            "-c",
            "sleeper",
            "--cancel-on-exit",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**isolated_env(), **cluster.cp.env()},
    )
    try:
        run = wait_for(
            lambda: json.loads(cluster.cli("run", "list", "-o", "json").stdout),
            20,
            "the run to be created",
        )[0]
        cluster.wait_run(int(run["id"]), statuses={"Running"})
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert f"run {run['id']} canceled" in err
    assert cluster.run_json(int(run["id"]))["status"] == "Canceled"
    cluster.wait_no_containers(int(run["id"]), timeout=10)
