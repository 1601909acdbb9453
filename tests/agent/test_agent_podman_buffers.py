"""A job's buffers through real FIFOs that Podman mounts into the container."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from muster.common.pipes import PIPE_DIR
from muster.v1 import run_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import BUSYBOX, PodmanNode, random_run_id
from tests.agent.test_agent_buffers import Plane, pipe, plane  # noqa: F401  (fixture)

pytestmark = pytest.mark.podman

EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED


async def test_a_job_copies_its_input_buffer_to_its_output_buffer_through_podman_fifos(
    podman_node: PodmanNode,
    fake_cp: FakeControlPlane,
    start_agent: StartAgent,
    plane: Plane,  # noqa: F811
    tmp_path: Path,
) -> None:
    await start_agent(
        podman_node.runtime(),
        node_name=podman_node.node,
        network=podman_node.network,
        state_dir=tmp_path / "state",
    )
    await fake_cp.wait_registered()
    inp, out = await plane.new_buffer(), await plane.new_buffer()
    data = os.urandom(6 * 2**20 + 7)
    await plane.write(inp, data)
    run_id = random_run_id()
    name = f"muster-run-{run_id}-job-0"
    fake_cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_JOB,
        replica=0,
        container_name=name,
        hostname=f"run-{run_id}-job-0",
        image=BUSYBOX,
        command=["sh", "-c"],
        args=['cat "$INPUT_PIPE" > "$OUTPUT_PIPE"'],
        env={"INPUT_PIPE": f"{PIPE_DIR}/input", "OUTPUT_PIPE": f"{PIPE_DIR}/output"},
        buffers=[pipe(plane, "input", inp, output=False), pipe(plane, "output", out, output=True)],
    )
    exited = await fake_cp.wait_status(name, EXITED, within=60)
    assert (exited.exit_code, exited.buffer_error) == (0, "")
    assert await plane.read(out) == data

    mounts = (await podman_node.inspect(name))["Mounts"]
    (mount,) = [m for m in mounts if m["Destination"] == PIPE_DIR]
    assert await asyncio.to_thread(os.path.isdir, mount["Source"])
    fake_cp.teardown(run_id)
    await fake_cp.wait_status(name, REMOVED, within=30)
    assert not await asyncio.to_thread(os.path.exists, mount["Source"])
