"""Buffers in runs over real gRPC: an in-process control plane with its data
plane, and a fake agent that speaks the Connect stream itself (no runtime).
CreateRun returns every parameter bound; the StartContainer the agent gets
carries one pipe per buffer whose URL really reads (input) or writes
(output) the buffer, the pipe variables and the expanded args; a canceled
run leaves its output marked failed."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from controlplane.server import ControlPlane, DataSettings, start
from muster.common.buffers import (
    BufferFailedError,
    ContainerClient,
    read_buffer,
    write_buffer,
)
from muster.common.pipes import PIPE_DIR
from muster.v1 import agent_pb2 as apb
from muster.v1 import agent_pb2_grpc as agrpc
from muster.v1 import buffer_pb2 as bpb
from muster.v1 import buffer_pb2_grpc as bgrpc
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port


class FakeAgent:
    """Registers one node and keeps every StartContainer it is sent."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._out: asyncio.Queue[apb.ConnectRequest] = asyncio.Queue()
        self.starts: asyncio.Queue[apb.StartContainer] = asyncio.Queue()
        self._call = agrpc.AgentServiceStub(channel).Connect(self._requests())
        self._task = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[apb.ConnectRequest]:
        while True:
            yield await self._out.get()

    async def _read(self) -> None:
        async for reply in self._call:
            if reply.HasField("start_container"):
                await self.starts.put(reply.start_container)

    def send(self, **message: object) -> None:
        self._out.put_nowait(apb.ConnectRequest(**message))  # type: ignore[arg-type]

    def register(self) -> None:
        capacity = npb.Capacity(cpu_millis=4000, memory_bytes=8 << 30)
        self.send(register=apb.Register(node_name="n1", pools=["cpu"], allocatable=capacity))

    def report(self, start: apb.StartContainer, state: int, **fields: object) -> None:
        status = apb.ContainerStatus(
            run_id=start.run_id,
            role=start.role,
            replica=start.replica,
            state=state,  # type: ignore[arg-type]
            generation=start.generation,
            container_name=start.container_name,
            **fields,  # type: ignore[arg-type]
        )
        self.send(container_status=status)

    async def close(self) -> None:
        self._call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    data = DataSettings("127.0.0.1:0", tmp_path / "blobs", tmp_path / "data.key")
    cp = await start(f"127.0.0.1:{free_port()}", tmp_path / "cp.db", data=data)
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


async def _bytes(url: str) -> bytes:
    sink = io.BytesIO()
    async with ContainerClient(url) as client:
        await read_buffer(client, sink)
    return sink.getvalue()


def _permissions(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sp"][0]


async def _write(url: str, data: bytes) -> None:
    async with ContainerClient(url) as client:
        await write_buffer(client, data)


PIPE_JOB = cpb.Codespec(
    name="pipe",
    kind=cpb.CODESPEC_KIND_JOB,
    image="localhost/x:1",
    args=["$(INPUT_PIPE)", "$$(OUTPUT_PIPE)", "$(TYGER_RUN_ID)"],
    buffers=cpb.Buffers(inputs=["input"], outputs=["output"]),
)


def _pipes_of(start: apb.StartContainer, created: rpb.Run) -> dict[str, apb.BufferPipe]:
    """The start's pipes by name, checked: PIPE_JOB's input and output, each
    named by its variable and in the args, over plain HTTP (--insecure)."""
    pipes = {p.name: p for p in start.buffers}
    assert set(pipes) == {"input", "output"}
    assert not pipes["input"].output and pipes["output"].output
    assert pipes["output"].buffer_id == created.buffers["output"]
    assert start.env["INPUT_PIPE"] == f"{PIPE_DIR}/input"
    assert start.env["OUTPUT_PIPE"] == f"{PIPE_DIR}/output"
    assert list(start.args) == [f"{PIPE_DIR}/input", "$(OUTPUT_PIPE)", str(created.id)]
    assert {p.ca_pem for p in start.buffers} == {""}  # --insecure: plain HTTP
    return pipes


async def test_a_job_gets_working_pipes(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        buffers = bgrpc.BufferServiceStub(channel)
        runs = rgrpc.RunServiceStub(channel)
        await cgrpc.CodespecServiceStub(channel).CreateCodespec(
            cpb.CreateCodespecRequest(codespec=PIPE_JOB)
        )
        given = (await buffers.CreateBuffer(bpb.CreateBufferRequest())).buffer.id
        writable = await buffers.GetBufferAccess(
            bpb.GetBufferAccessRequest(id=given, writable=True)
        )
        await _write(writable.uri, b"hello pipes")

        agent = FakeAgent(channel)
        try:
            agent.register()
            run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="pipe")))
            run.buffers["input"] = given
            created = (await runs.CreateRun(rpb.CreateRunRequest(run=run))).run
            assert set(created.buffers) == {"input", "output"}
            assert created.buffers["input"] == given
            shown = (await runs.GetRun(rpb.GetRunRequest(run_id=created.id))).run
            assert dict(shown.buffers) == dict(created.buffers)

            start = await asyncio.wait_for(agent.starts.get(), 10)
            pipes = _pipes_of(start, created)

            # the URLs work: the input reads, but is read-only; the output writes
            assert await _bytes(pipes["input"].access_url) == b"hello pipes"
            assert _permissions(pipes["input"].access_url) == "r"
            assert _permissions(pipes["output"].access_url) == "cr"
            await _write(pipes["output"].access_url, b"answer")
            output = await buffers.GetBufferAccess(
                bpb.GetBufferAccessRequest(id=created.buffers["output"])
            )
            assert await _bytes(output.uri) == b"answer"

            # a second run, canceled while running: its output ends failed
            again = (await runs.CreateRun(rpb.CreateRunRequest(run=run))).run
            second = await asyncio.wait_for(agent.starts.get(), 10)
            agent.report(second, rpb.CONTAINER_STATE_RUNNING)
            await runs.CancelRun(rpb.CancelRunRequest(run_id=again.id))
            failed = await buffers.GetBufferAccess(
                bpb.GetBufferAccessRequest(id=again.buffers["output"])
            )
            with pytest.raises(BufferFailedError):
                await asyncio.wait_for(_bytes(failed.uri), 10)
            # the first run's output, complete, stays complete whatever happens
            agent.report(start, rpb.CONTAINER_STATE_EXITED, exit_code=0)
            await _until_terminal(runs, created.id, rpb.RUN_STATUS_SUCCEEDED)
            assert await _bytes(output.uri) == b"answer"
        finally:
            await agent.close()


async def _until_terminal(runs: rgrpc.RunServiceStub, run_id: int, status: int) -> None:
    async with asyncio.timeout(10):
        async for reply in runs.WatchRun(rpb.WatchRunRequest(run_id=run_id)):
            if reply.run.status in (
                rpb.RUN_STATUS_SUCCEEDED,
                rpb.RUN_STATUS_FAILED,
                rpb.RUN_STATUS_CANCELED,
            ):
                assert reply.run.status == status, reply.run.status_reason
                return


async def test_refusals_are_one_line_and_store_nothing(plane: ControlPlane) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        runs = rgrpc.RunServiceStub(channel)
        spec = cpb.Codespec(
            name="pipe",
            kind=cpb.CODESPEC_KIND_JOB,
            image="localhost/x:1",
            buffers=cpb.Buffers(outputs=["output"]),
        )
        await cgrpc.CodespecServiceStub(channel).CreateCodespec(
            cpb.CreateCodespecRequest(codespec=spec)
        )
        cases = [
            ({"output": "a" * 26}, 1, grpc.StatusCode.NOT_FOUND, "The buffer 'aaaa"),
            ({"other": "a" * 26}, 1, grpc.StatusCode.INVALID_ARGUMENT, "Buffer argument 'other'"),
            ({}, 2, grpc.StatusCode.INVALID_ARGUMENT, "does not share pipes"),
        ]
        for bindings, replicas, code, text in cases:
            run = rpb.Run(
                job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="pipe"), replicas=replicas)
            )
            run.buffers.update(bindings)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await runs.CreateRun(rpb.CreateRunRequest(run=run))
            assert err.value.code() == code and text in (err.value.details() or "")
            assert "\n" not in (err.value.details() or "")
        assert not (await runs.ListRuns(rpb.ListRunsRequest())).runs
        count = await bgrpc.BufferServiceStub(channel).CountBuffers(bpb.CountBuffersRequest())
        assert count.count == 0
