"""Placement generations and hosts entries (pure core)."""

from __future__ import annotations

from controlplane.core import runs as lifecycle
from controlplane.core.containers import container_spec
from controlplane.core.runs import Observation
from controlplane.store.documents import run_from_doc, run_to_doc
from tests.controlplane.test_runs_state import T0, make_run


def placed(generation: int = 99) -> lifecycle.Run:
    run = make_run(workers=2)
    assignment = {(r.role, r.index): f"n{r.index}" for r in run.replicas}
    lifecycle.place(run, assignment, T0, generation)
    return run


def test_a_report_with_another_generation_changes_nothing() -> None:
    run = placed(generation=99)
    stale = Observation("worker", 0, "exited", exit_code=0, generation=98)
    assert lifecycle.observe(run, "n0", stale, T0) == [] and run.replicas[1].state == "pending"
    assert run.status == "Pending"
    current = Observation("worker", 0, "running", True, generation=99)
    lifecycle.observe(run, "n0", current, T0)
    assert run.replica("worker", 0).state == "running"
    unlabelled = Observation("worker", 1, "running", True)  # generation 0: no label
    lifecycle.observe(run, "n1", unlabelled, T0)
    assert run.replica("worker", 1).state == "running"


def test_starts_carry_the_generation_and_it_survives_the_store() -> None:
    run = placed(generation=1234)
    assert container_spec(run, "worker", 0).generation == 1234
    assert run_from_doc(run_to_doc(run)).generation == 1234
    legacy = run_to_doc(run)
    del legacy["generation"]
    assert run_from_doc(legacy).generation == 0


def test_jobs_get_hosts_entries_for_every_worker() -> None:
    run = placed()
    for i, ip in enumerate(["10.0.0.11", "10.0.0.12"]):
        lifecycle.observe(
            run, f"n{i}", Observation("worker", i, "running", True, host_ip=ip, generation=99), T0
        )
    assert run.status == "Running"
    spec = container_spec(run, "job", 0, {"n0": "192.0.2.1"})
    assert spec.hosts == {"run-7-worker-0": "10.0.0.11", "run-7-worker-1": "10.0.0.12"}
    assert run_from_doc(run_to_doc(run)).replica("worker", 1).host_ip == "10.0.0.12"


def test_workers_get_their_peers_where_node_addresses_are_known() -> None:
    run = placed()
    spec = container_spec(run, "worker", 0, {"n0": "10.0.0.1", "n1": "10.0.0.2"})
    assert spec.hosts == {"run-7-worker-1": "10.0.0.2"}  # not itself
    assert container_spec(run, "worker", 0, {}).hosts == {}  # bridge: left to DNS


def test_container_names_carry_the_cluster_and_older_runs_keep_theirs() -> None:
    run = placed()
    run.cluster = "0123456789abcdef" * 2
    spec = container_spec(run, "worker", 1)
    assert (spec.name, spec.hostname, spec.cluster_id) == (
        "muster-012345-run-7-worker-1",
        "run-7-worker-1",  # hostnames (and so discovery) do not change
        run.cluster,
    )
    doc = run_to_doc(run)
    assert run_from_doc(doc).cluster == run.cluster
    del doc["cluster"]  # stored before cluster ids: its containers keep their names
    older = run_from_doc(doc)
    assert older.container_name("worker", 1) == "muster-run-7-worker-1"
    assert container_spec(older, "worker", 1, cluster_id=run.cluster).cluster_id == run.cluster


def test_resources_shm_reaches_the_container_spec() -> None:
    from dataclasses import replace

    run = placed()
    assert container_spec(run, "job", 0).shm_size_bytes == 0  # the runtime's default
    job = run.job.codespec
    run.job.codespec = replace(job, resources=replace(job.resources, shm="1Gi"))
    assert container_spec(run, "job", 0).shm_size_bytes == 2**30
