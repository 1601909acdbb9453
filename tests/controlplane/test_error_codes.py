"""Inputs at the edges and a failing store: INVALID_ARGUMENT or UNAVAILABLE,
never UNKNOWN or INTERNAL, and the server keeps serving."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc


async def test_logs_since_after_2262_is_empty_not_an_error(channel) -> None:
    codespecs, runs = cgrpc.CodespecServiceStub(channel), rgrpc.RunServiceStub(channel)
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="i"))
    )
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j")))
    run_id = (await runs.CreateRun(rpb.CreateRunRequest(run=run))).run.id
    since = Timestamp()
    since.FromDatetime(datetime(9000, 1, 1, tzinfo=UTC))
    lines = [
        line
        async for reply in runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id, since=since))
        for line in reply.lines
    ]
    assert lines == []


@pytest.mark.parametrize("depth", [50, 100_000])
async def test_nested_or_huge_page_tokens_are_invalid(channel, depth: int) -> None:
    raw = ("[" * depth + "]" * depth).encode()
    token = base64.urlsafe_b64encode(raw).decode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rgrpc.RunServiceStub(channel).ListRuns(rpb.ListRunsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page token" in (err.value.details() or "")


async def test_a_failing_store_answers_unavailable(control_plane, channel) -> None:
    codespecs = cgrpc.CodespecServiceStub(channel)
    store = control_plane.store
    conn = store._conn  # the test breaks the database underneath on purpose
    await store._call(conn.close)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await codespecs.CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="x", image="i"))
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "store is unavailable" in (err.value.details() or "")
    finally:
        await store._call(store._connect)  # repaired: the server serves again
    reply = await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="x", image="i"))
    )
    assert reply.codespec.version == 1


async def test_commits_reach_the_disk_before_they_are_acted_on(control_plane) -> None:
    store = control_plane.store
    level = await store._call(lambda: store._conn.execute("PRAGMA synchronous").fetchone()[0])
    assert level == 2  # FULL
