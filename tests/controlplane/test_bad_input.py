"""Out-of-range and malformed input over real gRPC: a clear INVALID_ARGUMENT
(never UNKNOWN or INTERNAL), and nothing stored."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc


def token(query: dict, cursor: object) -> str:
    raw = json.dumps({"q": query, "c": cursor}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def expect_invalid(call, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert fragment in info.value.details()


async def test_out_of_range_values(channel) -> None:
    runs, codespecs = rgrpc.RunServiceStub(channel), cgrpc.CodespecServiceStub(channel)
    far = Timestamp(seconds=2**62)
    await expect_invalid(runs.ListRuns(rpb.ListRunsRequest(since=far)), "since")
    await expect_invalid(runs.CountRuns(rpb.CountRunsRequest(since=far)), "since")
    huge = cpb.Codespec(
        name="x",
        image="i",
        resources=cpb.Resources(limits=cpb.ResourceQuantities(memory="9999999999999999Ei")),
    )
    await expect_invalid(
        codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=huge)),
        "resources.limits.memory",
    )
    cpu = cpb.Codespec(
        name="x", image="i", resources=cpb.Resources(requests=cpb.ResourceQuantities(cpu="1e20"))
    )
    await expect_invalid(
        codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=cpu)), "resources.requests.cpu"
    )
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="i"))
    )
    far_version = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j/versions/99999999999999999999999"))
    )
    await expect_invalid(runs.CreateRun(rpb.CreateRunRequest(run=far_version)), "job.codespec")
    listed = await runs.ListRuns(rpb.ListRunsRequest())
    assert list(listed.runs) == []


async def test_forged_page_tokens(channel) -> None:
    runs, codespecs = rgrpc.RunServiceStub(channel), cgrpc.CodespecServiceStub(channel)
    run_query = {"since": None, "statuses": [], "tags": {}}
    for cursor in (2**70, "7", True, -1):
        await expect_invalid(
            runs.ListRuns(rpb.ListRunsRequest(page_token=token(run_query, cursor))), "page_token"
        )
    spec_query = {"order": "newest", "prefix": ""}
    for cursor in (["abc", "x"], [2**70, "x"], "x", [1]):
        await expect_invalid(
            codespecs.ListCodespecs(cpb.ListCodespecsRequest(page_token=token(spec_query, cursor))),
            "page_token",
        )


async def test_logs_and_watch_over_grpc(channel) -> None:
    runs, codespecs = rgrpc.RunServiceStub(channel), cgrpc.CodespecServiceStub(channel)
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="i"))
    )
    created = await runs.CreateRun(
        rpb.CreateRunRequest(
            run=rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j")))
        )
    )
    run_id = created.run.id
    far = Timestamp(seconds=2**62)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id, since=far)):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id + 1)):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    lines = [r async for r in runs.GetRunLogs(rpb.GetRunLogsRequest(run_id=run_id))]
    assert lines == []  # nothing written yet, and no follow: the stream ends

    seen = []
    async for reply in runs.WatchRun(rpb.WatchRunRequest(run_id=run_id)):
        seen.append(reply.run.status)
        if len(seen) == 1:
            await runs.CancelRun(rpb.CancelRunRequest(run_id=run_id))
    assert seen[0] == rpb.RUN_STATUS_PENDING and seen[-1] == rpb.RUN_STATUS_CANCELED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in runs.WatchRun(rpb.WatchRunRequest(run_id=run_id + 1)):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_enum_values_the_control_plane_does_not_know_are_refused(channel) -> None:
    """Conversions never guess: an unknown kind or status is INVALID_ARGUMENT."""
    runs, codespecs = rgrpc.RunServiceStub(channel), cgrpc.CodespecServiceStub(channel)
    odd_kind = cpb.Codespec(name="k", image="i", kind=99)
    await expect_invalid(
        codespecs.CreateCodespec(cpb.CreateCodespecRequest(codespec=odd_kind)), "kind"
    )
    await expect_invalid(runs.ListRuns(rpb.ListRunsRequest(statuses=[99])), "statuses")
    made = await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="k", image="i"))
    )
    assert made.codespec.kind == cpb.CODESPEC_KIND_JOB, "unspecified is a job, as documented"
