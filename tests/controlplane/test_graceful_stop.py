"""A graceful stop of the control plane stores what agents observed and the
orchestrator kept for write-behind: after `stop`, the database holds it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc

from controlplane.store.sqlite import SqliteStore
from muster.v1 import run_pb2 as rpb
from tests.controlplane.conftest import plane_with
from tests.controlplane.test_images_grpc import codespecs, status, until_run
from tests.controlplane.test_wire_batches import create
from tests.security.conftest import connect


async def test_stop_stores_observations_kept_for_write_behind(tmp_path: Path) -> None:
    # No tick during the test: only the stop can store the observation.
    plane = await plane_with(tmp_path, tick=timedelta(seconds=60))
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            agent = await connect(ch, "n1", ["cpu"], accepts_start_batches=True)
            await agent.next("registered")
            await codespecs(ch, "img", "img")
            run = await create(ch, workers=1)
            start = (await agent.next("start_containers")).start_containers.starts[0]
            agent.send(container_status=status(start, rpb.CONTAINER_STATE_CREATING))

            def creating(r: rpb.Run) -> bool:
                return r.replicas[0].state == rpb.CONTAINER_STATE_CREATING

            await until_run(ch, run.id, creating, "the worker creating, in memory")
            await plane.stop(grace=0.2)
            stopped = True
    finally:
        if not stopped:
            await plane.stop(grace=0.2)
    store = await SqliteStore.open(tmp_path / "cp.db")
    try:
        stored = await store.get_run(run.id)
        assert stored is not None
        assert stored.replica("worker", 0).state == "creating"
    finally:
        await store.close()
