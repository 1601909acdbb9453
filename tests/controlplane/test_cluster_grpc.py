"""The cluster id over real gRPC with hand-driven agents: told in Registered
and every StartContainer, in container names, and reports about containers of
another cluster ignored (those without a cluster id are this cluster's)."""

from __future__ import annotations

import grpc

from muster.v1 import agent_pb2 as apb
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.controlplane.test_images_grpc import codespecs, get_run, status, until_run
from tests.security.conftest import connect

OTHER = "f" * 32


async def test_agents_learn_the_cluster_and_other_clusters_are_ignored(plane, ch) -> None:
    cluster = await plane.store.cluster_id()
    # Register lists a container of another cluster first, then one made before
    # cluster ids: only the latter (a leftover of this cluster) is torn down.
    agent = await connect(
        ch,
        "n1",
        ["cpu"],
        containers=[
            apb.ContainerStatus(run_id=999, role=rpb.REPLICA_ROLE_JOB, state=3, cluster_id=OTHER),
            apb.ContainerStatus(run_id=998, role=rpb.REPLICA_ROLE_JOB, state=3),
        ],
    )
    registered = (await agent.next("registered")).registered
    assert registered.cluster_id == cluster and len(cluster) == 32
    teardown = await agent.next("teardown_run")
    assert teardown.teardown_run.run_id == 998  # nothing about 999 came before it

    await codespecs(ch, "img", "img")
    created = await create_job(ch)
    start = (await agent.next("start_container")).start_container
    name = f"muster-{cluster[:6]}-run-{created.id}-job-0"
    assert (start.container_name, start.hostname, start.cluster_id) == (
        name,
        f"run-{created.id}-job-0",
        cluster,
    )
    assert (await get_run(ch, created.id)).replicas[0].container_name == name

    # A report about another cluster's container of the same run id changes nothing.
    agent.send(
        container_status=status(start, rpb.CONTAINER_STATE_EXITED, exit_code=1, cluster_id=OTHER)
    )
    agent.send(container_status=status(start, rpb.CONTAINER_STATE_RUNNING, cluster_id=cluster))
    running = await until_run(
        ch, created.id, lambda r: r.replicas[0].state == rpb.CONTAINER_STATE_RUNNING, "running"
    )
    assert running.status == rpb.RUN_STATUS_RUNNING
    agent.send(container_status=status(start, rpb.CONTAINER_STATE_EXITED, exit_code=0))
    done = await until_run(ch, created.id, lambda r: r.status != rpb.RUN_STATUS_RUNNING, "the end")
    assert done.status == rpb.RUN_STATUS_SUCCEEDED


async def create_job(ch: grpc.aio.Channel) -> rpb.Run:
    message = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"))
    return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=message))).run
