"""A job's buffers on the agent: FIFOs, copies and their reports.

Fake runtime (nothing is mounted: the test plays the job by opening the
FIFOs the agent made), the fake control plane, and a real data plane on
loopback, so every byte goes through the format library and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.buffer_copies import LOST, BufferCopies
from agent.messages import spec_from_start
from agent.runtime_fake import FakeRuntime
from agent.supervisor import Supervisor
from controlplane.dataplane.server import DataPlane
from muster.common.buffers import BufferFailedError, ContainerClient, read_buffer, write_buffer
from muster.common.buffers.format import new_buffer_id
from muster.common.pipes import PIPE_DIR
from muster.v1 import agent_pb2, run_pb2
from tests.agent.conftest import RunningAgent, StartAgent, eventually
from tests.agent.fakecp import FakeControlPlane
from tests.agent.test_agent_protocol import job

RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
HOUR = datetime.timedelta(hours=1)


class Plane(DataPlane):
    """The real data plane, with data-blob uploads that a test can hold or refuse."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, b"k" * 32)
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse_data = False
        self.held = 0

    async def _put_blob(self, request: web.Request) -> web.Response:
        if not request.match_info["blob"].startswith("."):
            if self.refuse_data:
                return web.Response(status=400, headers={"x-ms-error-code": "InvalidInput"})
            self.held += 1
            await self.gate.wait()
        return await super()._put_blob(request)

    def url(self, buffer_id: str, *, writable: bool) -> str:
        expires = datetime.datetime.now(datetime.UTC) + HOUR
        return self.access_url(buffer_id, writable=writable, expires_at=expires)

    async def new_buffer(self) -> str:
        buffer_id = new_buffer_id()
        await self.create(buffer_id)
        return buffer_id

    async def read(self, buffer_id: str) -> bytes:
        """The whole buffer (raises BufferFailedError for a failed one)."""
        out = bytearray()

        async def sink(data: bytes) -> None:
            out.extend(data)

        async with ContainerClient(self.url(buffer_id, writable=False)) as client:
            await asyncio.wait_for(read_buffer(client, sink, end_poll_interval=0.1), 10)
        return bytes(out)

    async def write(self, buffer_id: str, data: bytes) -> None:
        async with ContainerClient(self.url(buffer_id, writable=True)) as client:
            await write_buffer(client, data)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    dp = Plane(tmp_path / "dataplane")
    await dp.start("127.0.0.1", 0)
    try:
        yield dp
    finally:
        dp.gate.set()
        await dp.stop()


def pipe(plane: Plane, name: str, buffer_id: str, *, output: bool) -> agent_pb2.BufferPipe:
    return agent_pb2.BufferPipe(
        name=name,
        output=output,
        buffer_id=buffer_id,
        access_url=plane.url(buffer_id, writable=output),
    )


async def start_job(
    start_agent: StartAgent,
    fake_cp: FakeControlPlane,
    tmp_path: Path,
    run_id: int,
    buffers: list[agent_pb2.BufferPipe],
) -> tuple[FakeRuntime, str, Path]:
    """An agent (state in ``tmp_path``) running job ``run_id`` with ``buffers``; the
    job's name and the host directory of its FIFOs."""
    agent = await start_agent(state_dir=tmp_path / "state")
    await fake_cp.wait_registered()
    fake_cp.start_container(**job(run_id, buffers=buffers))
    name = f"muster-run-{run_id}-job-0"
    await fake_cp.wait_status(name, RUNNING)
    runtime = agent.runtime
    assert isinstance(runtime, FakeRuntime)
    _AGENTS[id(runtime)] = agent
    return runtime, name, Path(runtime.mounts(name)[PIPE_DIR])


_AGENTS: dict[int, RunningAgent] = {}


def agent_of(runtime: FakeRuntime) -> RunningAgent:
    """The agent started over ``runtime`` by :func:`start_job`."""
    return _AGENTS.pop(id(runtime))


def statuses(fake_cp: FakeControlPlane, name: str) -> list[agent_pb2.ContainerStatus]:
    return [s for s in fake_cp.current.statuses if s.container_name == name]


async def write_fifo(path: Path, data: bytes) -> None:
    """Play a job writing ``data`` to its output FIFO and closing it."""

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)

    await asyncio.wait_for(asyncio.to_thread(write), 10)


async def read_fifo(path: Path) -> bytes:
    """Play a job reading its input FIFO to end of file."""

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return await asyncio.wait_for(asyncio.to_thread(read), 10)


async def test_output_bytes_arrive_complete_before_exited(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out = await plane.new_buffer()
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 700, [pipe(plane, "out", out, output=True)]
    )
    fifo = pipes / "out"
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_IMODE(fifo.lstat().st_mode) == 0o666
    data = os.urandom(5 * 2**20 + 123)
    plane.gate.clear()  # the data plane takes no block yet
    await write_fifo(fifo, data)
    runtime.exit(name, 0)
    await eventually(lambda: plane.held > 0, what="an upload waiting")
    polls = runtime.list_count
    await eventually(lambda: runtime.list_count > polls + 5, what="the agent saw the exit")
    assert [s.state for s in statuses(fake_cp, name)][-1] == RUNNING, "no EXITED before the copy"

    plane.gate.set()
    exited = await fake_cp.wait_status(name, EXITED, within=10)
    assert (exited.exit_code, exited.buffer_error) == (0, "")
    assert await plane.read(out) == data

    fake_cp.teardown(700)
    await fake_cp.wait_status(name, REMOVED)
    assert not pipes.parent.exists(), "the pipe directory goes with the container"


async def test_input_reaches_the_fifo_while_the_buffer_is_written(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    inp = await plane.new_buffer()
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 701, [pipe(plane, "in", inp, output=False)]
    )
    first, second = os.urandom(300_000), os.urandom(2 * 2**20)
    more = asyncio.Event()

    async def producer() -> AsyncIterator[bytes]:
        yield first
        await more.wait()
        yield second

    async with ContainerClient(plane.url(inp, writable=True)) as client:
        writing = asyncio.create_task(write_buffer(client, producer(), flush_interval=0.05))
        reading = asyncio.create_task(read_fifo(pipes / "in"))
        await eventually(lambda: plane.held > 0, what="the first block stored")
        more.set()  # the buffer goes on while the agent already copies it
        await writing
        assert await reading == first + second

    runtime.exit(name, 0)
    exited = await fake_cp.wait_status(name, EXITED)
    assert (exited.exit_code, exited.buffer_error) == (0, "")


async def test_a_job_that_never_opens_its_pipes_leaves_an_empty_complete_output(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out, inp = await plane.new_buffer(), await plane.new_buffer()
    await plane.write(inp, b"never read")
    runtime, name, _ = await start_job(
        start_agent,
        fake_cp,
        tmp_path,
        702,
        [pipe(plane, "out", out, output=True), pipe(plane, "in", inp, output=False)],
    )
    runtime.exit(name, 0)
    exited = await fake_cp.wait_status(name, EXITED)
    assert (exited.exit_code, exited.buffer_error) == (0, "")
    assert await plane.read(out) == b""


async def test_a_job_that_exits_1_is_reported_after_its_output_is_marked_failed(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out = await plane.new_buffer()
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 703, [pipe(plane, "out", out, output=True)]
    )
    await write_fifo(pipes / "out", b"partial")
    runtime.exit(name, 1)
    exited = await fake_cp.wait_status(name, EXITED)
    assert (exited.exit_code, exited.buffer_error) == (1, ""), "the job failed, not a copy"
    with pytest.raises(BufferFailedError):
        await plane.read(out)


async def test_a_failing_data_plane_fails_the_output_and_is_reported(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out = await plane.new_buffer()
    plane.refuse_data = True
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 704, [pipe(plane, "out", out, output=True)]
    )
    with contextlib.suppress(BrokenPipeError):
        await write_fifo(pipes / "out", b"x" * 100_000)
    running = await fake_cp.wait_for(
        lambda: next((s for s in statuses(fake_cp, name) if s.buffer_error), None),
        what="a RUNNING status with the error",
    )
    assert running.state == RUNNING
    assert running.buffer_error.startswith("output buffer 'out': ")
    # A late open of the failed output does not hang the job: a broken pipe.
    with pytest.raises(BrokenPipeError):
        await write_fifo(pipes / "out", b"y" * 100_000)

    runtime.exit(name, 0)
    exited = await fake_cp.wait_status(name, EXITED)
    assert exited.buffer_error == running.buffer_error
    with pytest.raises(BufferFailedError):
        await plane.read(out)


async def test_a_failed_input_buffer_is_reported_and_the_job_sees_end_of_file(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    inp = await plane.new_buffer()
    await plane.mark_failed(inp)
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 705, [pipe(plane, "in", inp, output=False)]
    )
    assert await read_fifo(pipes / "in") == b""
    runtime.exit(name, 0)
    exited = await fake_cp.wait_status(name, EXITED)
    assert exited.buffer_error == "input buffer 'in': the buffer is in a permanently failed state"


async def test_teardown_mid_copy_marks_the_output_failed(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out = await plane.new_buffer()
    _, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 706, [pipe(plane, "out", out, output=True)]
    )
    fd = await asyncio.to_thread(os.open, pipes / "out", os.O_WRONLY)  # the job keeps writing
    try:
        os.write(fd, b"some bytes")
        fake_cp.teardown(706)
        await fake_cp.wait_status(name, REMOVED, within=10)
    finally:
        os.close(fd)
    assert EXITED not in [s.state for s in statuses(fake_cp, name)]
    with pytest.raises(BufferFailedError):
        await plane.read(out)
    assert not pipes.exists()


async def test_copies_lost_in_an_agent_restart_are_reported(
    start_agent: StartAgent, fake_cp: FakeControlPlane, plane: Plane, tmp_path: Path
) -> None:
    out, done = await plane.new_buffer(), await plane.new_buffer()
    runtime, name, pipes = await start_job(
        start_agent, fake_cp, tmp_path, 707, [pipe(plane, "out", out, output=True)]
    )
    fake_cp.start_container(
        **job(708, buffers=[pipe(plane, "out", done, output=True)]),
    )
    finished = "muster-run-708-job-0"
    await fake_cp.wait_status(finished, RUNNING)
    await write_fifo(Path(runtime.mounts(finished)[PIPE_DIR]) / "out", b"kept")
    runtime.exit(finished, 0)
    await fake_cp.wait_status(finished, EXITED)

    await agent_of(runtime).stop()
    await start_agent(runtime=runtime, state_dir=tmp_path / "state")
    stream = await fake_cp.wait_registered(count=2)
    assert stream.register is not None
    reg = {c.container_name: c for c in stream.register.containers}
    assert (reg[name].state, reg[name].buffer_error) == (RUNNING, LOST)
    assert (reg[finished].state, reg[finished].buffer_error) == (EXITED, ""), "outcome kept"
    assert await plane.read(done) == b"kept"
    with pytest.raises(BufferFailedError):  # the stopped agent's writer marked it failed
        await plane.read(out)

    runtime.exit(name, 0)
    exited = await fake_cp.wait_status(name, EXITED, stream=stream)
    assert exited.buffer_error == LOST
    assert pipes.exists()


async def test_an_output_stalled_after_the_job_exited_is_given_up(
    plane: Plane, tmp_path: Path
) -> None:
    runtime = FakeRuntime(node_name="node-a")
    sent: list[agent_pb2.ContainerStatus] = []
    sup = Supervisor(
        runtime, poll_interval=0.02, copies=BufferCopies(tmp_path / "pipes", stall_timeout=0.5)
    )
    sup.attach(lambda status: sent.append(status.to_pb()))
    watcher = asyncio.create_task(sup.watch())
    try:
        out = await plane.new_buffer()
        name = "muster-run-709-job-0"
        sup.handle_start(
            spec_from_start(
                agent_pb2.StartContainer(**job(709, buffers=[pipe(plane, "out", out, output=True)]))
            )
        )
        await eventually(lambda: any(s.state == RUNNING for s in sent), what="RUNNING")
        plane.gate.clear()  # the data plane stops taking blocks
        await write_fifo(Path(runtime.mounts(name)[PIPE_DIR]) / "out", b"stuck")
        runtime.exit(name, 0)
        await eventually(lambda: any(s.state == EXITED for s in sent), what="EXITED")
        (exited,) = [s for s in sent if s.state == EXITED]
        assert exited.buffer_error == (
            "output buffer 'out': no block stored for 0.5 s after the job exited"
        )
        with pytest.raises(BufferFailedError):
            await plane.read(out)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await sup.close()
