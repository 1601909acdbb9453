"""A control plane on PostgreSQL, with real gRPC and fake-runtime agents: a
distributed run from creation to teardown, and a restart of the control plane
mid-run (adopted from what PostgreSQL kept, nothing started twice)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.server import ControlPlane, start
from controlplane.store.factory import open_store
from controlplane.store.postgres import PostgresStore
from muster.v1 import run_pb2 as rpb
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import (
    SETTINGS,
    Fleet,
    container_of,
    create_run,
    get_run,
    setup_codespecs,
    until,
)


@pytest.fixture
async def pg_cluster(
    postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[list[ControlPlane], Fleet, str, str]]:
    address = f"127.0.0.1:{free_port()}"
    planes = [await start(address, postgres_url, SETTINGS)]
    fleet = Fleet(address)
    try:
        yield planes, fleet, address, postgres_url
    finally:
        await fleet.close()
        await planes[-1].stop(grace=0.2)


async def test_a_distributed_run_on_postgresql_survives_a_control_plane_restart(
    pg_cluster,
) -> None:
    planes, fleet, address, url = pg_cluster
    assert isinstance(planes[0].store, PostgresStore)
    cpu, gpu = fleet.add("n-cpu", "cpu"), fleet.add("n-gpu", "gpu")
    await setup_codespecs(address)
    run_id = await create_run(address, workers=2)
    job = container_of(await get_run(address, run_id), "job")
    await until(lambda: job in cpu.containers, 10, "the job to be released")
    cluster = cpu.containers[job].spec.cluster_id
    creates_before = (cpu.create_count, gpu.create_count)

    await planes[0].stop(grace=0.2)  # the control plane goes away mid-run
    planes.append(await start(address, url, SETTINGS, store=await open_store(url)))

    async def running_again() -> bool:
        run = await get_run(address, run_id)
        return run.status == rpb.RUN_STATUS_RUNNING and run.running_count == 1

    await until(running_again, 15, "the run to be adopted as Running")
    assert await planes[-1].store.cluster_id() == cluster  # the same cluster
    cpu.exit(job, 0)

    async def succeeded() -> bool:
        return (await get_run(address, run_id)).status == rpb.RUN_STATUS_SUCCEEDED

    await until(succeeded, 15, "Succeeded after the restart")
    assert (cpu.create_count, gpu.create_count) == creates_before  # nothing started twice
    await until(lambda: not gpu.containers and not cpu.containers, 10, "teardown")
