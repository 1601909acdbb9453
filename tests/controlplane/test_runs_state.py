"""The run state machine (pure): release, outcomes, deadlines, teardown actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.core import runs as lifecycle
from controlplane.core.codespec import Codespec
from controlplane.core.containers import container_spec
from controlplane.core.runs import Observation, StartReplica, Target, Teardown

T0 = datetime(2026, 1, 1, tzinfo=UTC)
READY_TIMEOUT = timedelta(seconds=30)


def make_run(workers: int = 2, jobs: int = 1) -> lifecycle.Run:
    job = Target(Codespec(name="j", image="img", env={"X": "$(TYGER_RUN_ID)-x"}), "j")
    worker = (
        Target(
            Codespec(name="w", image="img", kind="worker", endpoints={"http": 8080, "Grpc": 9}),
            "w",
            replicas=workers,
        )
        if workers
        else None
    )
    job.replicas = jobs
    return lifecycle.new_run(7, job, worker, T0)


def placed(workers: int = 2, jobs: int = 1) -> tuple[lifecycle.Run, list]:
    run = make_run(workers, jobs)
    assignment = {(r.role, r.index): f"n{r.index}" for r in run.replicas}
    return run, lifecycle.place(run, assignment, T0)


def ready(run: lifecycle.Run, index: int) -> list:
    addr = {"http": f"run-7-worker-{index}:8080", "Grpc": f"run-7-worker-{index}:9"}
    return lifecycle.observe(
        run, f"n{index}", Observation("worker", index, "running", True, addresses=addr), T0
    )


def test_place_starts_workers_only() -> None:
    run, actions = placed()
    assert actions == [StartReplica("n0", 7, "worker", 0), StartReplica("n1", 7, "worker", 1)]
    assert run.status == "Pending" and "0 of 2 ready" in run.status_reason
    assert [e.message for e in run.events][1:3] == [
        "worker 0 scheduled on n0",
        "worker 1 scheduled on n1",
    ]


def test_job_released_only_when_every_worker_is_ready() -> None:
    run, _ = placed()
    assert ready(run, 0) == []
    assert run.status_reason.endswith("1 of 2 ready")
    assert ready(run, 1) == [StartReplica("n0", 7, "job", 0)]
    assert run.status == "Running" and run.started_at == T0
    assert "job released" in [e.message for e in run.events]


def test_job_env_carries_discovery_in_index_order() -> None:
    run, _ = placed(workers=3)
    for i in (2, 0, 1):
        ready(run, i)
    env = container_spec(run, "job", 0).env
    assert env["TYGER_WORKER_NODES"] == '["run-7-worker-0","run-7-worker-1","run-7-worker-2"]'
    assert env["TYGER_HTTP_WORKER_ENDPOINT_ADDRESSES"] == (
        '["run-7-worker-0:8080","run-7-worker-1:8080","run-7-worker-2:8080"]'
    )
    assert env["TYGER_GRPC_WORKER_ENDPOINT_ADDRESSES"].startswith('["run-7-worker-0:9"')
    assert env["TYGER_RUN_ID"] == "7"
    assert env["X"] == "7-x"  # $(VAR) expansion
    worker_env = container_spec(run, "worker", 1).env
    assert worker_env["TYGER_WORKER_INDEX"] == "1" and worker_env["TYGER_RUN_ID"] == "7"
    spec = container_spec(run, "worker", 1)
    assert (spec.name, spec.hostname) == ("muster-run-7-worker-1", "run-7-worker-1")


def test_host_port_addresses_reported_by_agents_are_used() -> None:
    run, _ = placed(workers=1)
    lifecycle.observe(
        run,
        "n0",
        Observation(
            "worker",
            0,
            "running",
            True,
            addresses={"http": "10.0.0.5:31000", "Grpc": "10.0.0.5:31001"},
        ),
        T0,
    )
    env = container_spec(run, "job", 0).env
    assert env["TYGER_HTTP_WORKER_ENDPOINT_ADDRESSES"] == '["10.0.0.5:31000"]'


def test_run_without_workers_releases_at_once() -> None:
    run, actions = placed(workers=0)
    assert actions == [StartReplica("n0", 7, "job", 0)]
    assert run.status == "Running"


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        (0, "Succeeded", ""),
        (3, "Failed", "job exited with code 3"),
    ],
)
def test_job_outcome(code: int, status: str, reason: str) -> None:
    run, _ = placed(workers=1)
    ready(run, 0)
    actions = lifecycle.observe(run, "n0", Observation("job", 0, "exited", exit_code=code), T0)
    assert (run.status, run.status_reason) == (status, reason)
    assert actions == [Teardown("n0", 7)]


def test_all_job_replicas_must_succeed() -> None:
    run, _ = placed(workers=0, jobs=2)
    assert lifecycle.observe(run, "n0", Observation("job", 0, "exited", exit_code=0), T0) == []
    assert run.status == "Running"
    lifecycle.observe(run, "n1", Observation("job", 1, "exited", exit_code=0), T0)
    assert run.status == "Succeeded"


def test_worker_death_fails_the_run_and_tears_down_everywhere() -> None:
    run, _ = placed()
    ready(run, 0)
    ready(run, 1)
    actions = lifecycle.observe(run, "n1", Observation("worker", 1, "exited", exit_code=137), T0)
    assert (run.status, run.status_reason) == ("Failed", "worker 1 exited with code 137")
    assert actions == [Teardown("n0", 7), Teardown("n1", 7)]


def test_missing_image_fails_naming_it() -> None:
    run, _ = placed()
    lifecycle.observe(
        run,
        "n0",
        Observation("worker", 0, "failed", message="image 'x' not found on node 'n0'"),
        T0,
    )
    assert run.status == "Failed"
    assert "image 'x' not found on node 'n0'" in run.status_reason


def test_readiness_timeout_names_worker_and_endpoint() -> None:
    run, _ = placed()
    ready(run, 0)
    lifecycle.observe(
        run,
        "n1",
        Observation(
            "worker",
            1,
            "running",
            False,
            message="endpoint 'http' (port 8080) not accepting connections yet",
        ),
        T0,
    )
    assert lifecycle.check_deadlines(run, T0 + timedelta(seconds=29), READY_TIMEOUT) == []
    actions = lifecycle.check_deadlines(run, T0 + timedelta(seconds=30), READY_TIMEOUT)
    assert run.status == "Failed" and actions
    assert run.status_reason == (
        "worker 1 was not ready within 30s of its start: endpoint 'http' "
        "(port 8080) not accepting connections yet"
    )


def test_run_timeout() -> None:
    run = make_run()
    run.timeout_seconds = 5
    assert (
        lifecycle.check_deadlines(run, T0 + timedelta(seconds=5), READY_TIMEOUT) == []
    )  # unplaced
    assert run.status == "Failed" and "timed out after 5s" in run.status_reason


def test_cancel_and_terminal_is_final() -> None:
    run, _ = placed()
    actions = lifecycle.cancel(run, T0)
    assert run.status == "Canceled" and len(actions) == 2
    assert lifecycle.cancel(run, T0) == []
    assert ready(run, 0) == []
    assert run.status == "Canceled"


def test_node_lost_fails_runs_with_replicas_there() -> None:
    run, _ = placed()
    actions = lifecycle.node_lost(run, "n1", T0)
    assert (
        run.status == "Failed" and run.status_reason == "node n1 was lost (worker 1 placed there)"
    )
    assert Teardown("n0", 7) in actions
    other, _ = placed()
    assert lifecycle.node_lost(other, "elsewhere", T0) == [] and other.status == "Pending"


def test_pending_starts_resend_unstarted_replicas() -> None:
    run, _ = placed()
    assert lifecycle.pending_starts(run, "n0") == [StartReplica("n0", 7, "worker", 0)]
    ready(run, 0)
    assert lifecycle.pending_starts(run, "n0") == []


def test_a_vanished_running_worker_fails_the_run() -> None:
    run, _ = placed()
    ready(run, 0)
    lifecycle.missing_container(run, "n0", "worker", 0, T0)
    assert run.status == "Failed" and run.status_reason == "worker 0 exited unexpectedly"
