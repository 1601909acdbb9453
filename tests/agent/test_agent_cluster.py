"""Cluster ids: the agent labels containers with its cluster's id and, once
Registered has named the cluster, manages only that cluster's containers (and
those made before cluster ids existed), leaving another cluster's alone."""

from __future__ import annotations

import logging

from agent.podman_attrs import info_from_inspect, info_from_list
from agent.runtime import LABEL_CLUSTER, ContainerSpec, container_labels, identity_from_labels
from agent.runtime_fake import FakeRuntime
from tests.agent.conftest import StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane
from tests.agent.test_agent_protocol import JOB, REMOVED, RUNNING

OURS, THEIRS = "a" * 32, "b" * 32


def existing(run_id: int, cluster: str, replica: int = 0) -> ContainerSpec:
    short = f"muster-{cluster[:6]}" if cluster else "muster"
    return ContainerSpec(
        run_id=run_id,
        role="job",
        replica=replica,
        name=f"{short}-run-{run_id}-job-{replica}",
        hostname=f"run-{run_id}-job-{replica}",
        image="img",
        cluster_id=cluster,
    )


def test_the_cluster_label_round_trips() -> None:
    labels = container_labels(existing(3, OURS), "n1")
    assert labels[LABEL_CLUSTER] == OURS
    assert identity_from_labels(labels).cluster_id == OURS  # type: ignore[union-attr]
    assert LABEL_CLUSTER not in container_labels(existing(3, ""), "n1")  # none to stamp
    inspected = {"Name": "x", "Config": {"Labels": labels}, "State": {"Status": "running"}}
    assert info_from_inspect(inspected, "n1", "muster").cluster_id == OURS  # type: ignore[union-attr]
    listed = {"Names": ["x"], "Labels": labels, "State": "running"}
    assert info_from_list(listed).cluster_id == OURS  # type: ignore[union-attr]


async def test_containers_of_another_cluster_are_left_alone(
    fake_cp: FakeControlPlane, start_agent: StartAgent, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="agent.runtime")
    fake_cp.cluster_id = OURS
    runtime = FakeRuntime(node_name="node-a")
    ours = runtime.add_existing(existing(5, OURS)).spec.name
    theirs = runtime.add_existing(existing(5, THEIRS)).spec.name  # same node name, same run id
    legacy = runtime.add_existing(existing(6, "")).spec.name  # from before cluster ids
    runtime.write_log(theirs, "stdout", "not ours\n")
    await start_agent(runtime)
    first = await fake_cp.wait_registered()
    # Until Registered names the cluster the agent cannot tell: it says whose each is.
    register = first.register
    assert register is not None
    assert {c.container_name: c.cluster_id for c in register.containers} == {
        ours: OURS,
        theirs: THEIRS,
        legacy: "",
    }

    fake_cp.teardown(5)
    await fake_cp.wait_status(ours, REMOVED)
    fake_cp.teardown(6)
    await fake_cp.wait_status(legacy, REMOVED)
    assert set(runtime.containers) == {theirs}  # never touched
    assert theirs not in runtime.log_follows  # nor its logs read
    assert not [s for s in fake_cp.current.statuses if s.container_name == theirs]

    fake_cp.start_container(
        run_id=7,
        role=JOB,
        replica=0,
        container_name=f"muster-{OURS[:6]}-run-7-job-0",
        hostname="run-7-job-0",
        image="img",
        cluster_id=OURS,
    )
    status = await fake_cp.wait_status(f"muster-{OURS[:6]}-run-7-job-0", RUNNING)
    assert status.cluster_id == OURS
    assert runtime.containers[f"muster-{OURS[:6]}-run-7-job-0"].spec.cluster_id == OURS

    # The next session's Register no longer mentions the other cluster's container.
    port = fake_cp.port
    await fake_cp.stop()
    await fake_cp.start(port)
    again = await fake_cp.wait_registered(count=2, within=15)
    assert again.register is not None
    assert [c.container_name for c in again.register.containers] == [
        f"muster-{OURS[:6]}-run-7-job-0"
    ]
    assert theirs in runtime.containers
    logged = [r for r in caplog.records if "container_of_other_cluster" in r.getMessage()]
    assert len([r for r in logged if theirs in r.getMessage()]) == 1  # logged once


async def test_a_control_plane_that_names_no_cluster_changes_nothing(
    fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    theirs = runtime.add_existing(existing(5, THEIRS)).spec.name
    await start_agent(runtime)
    await fake_cp.wait_registered()
    fake_cp.teardown(5)
    await fake_cp.wait_status(theirs, REMOVED)
    await eventually(lambda: not runtime.containers, what="the teardown")
