"""Idempotent CreateRun over real gRPC: the same request id within 24 h
returns the same run (in its current state), another id or none creates a
new one, and after 24 h (an injected wall clock) the id creates a new run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.server import ControlPlane, start
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Clock, rgrpc.RunServiceStub]]:
    clock = Clock()
    plane = await start("127.0.0.1:0", tmp_path / "cp.db", clock=clock)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            await cgrpc.CodespecServiceStub(ch).CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
            )
            yield plane, clock, rgrpc.RunServiceStub(ch)
    finally:
        await plane.stop(grace=0.2)


def create(request_id: str = "", job: str = "j") -> rpb.CreateRunRequest:
    run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named=job)))
    return rpb.CreateRunRequest(run=run, request_id=request_id)


async def test_the_same_request_id_returns_the_same_run(world) -> None:
    _, clock, stub = world
    first = (await stub.CreateRun(create("7d0c1f0e-5a8b-4c1e-9f3a-2b6d8e4f1a90"))).run
    again = (await stub.CreateRun(create("7d0c1f0e-5a8b-4c1e-9f3a-2b6d8e4f1a90"))).run
    assert again.id == first.id
    other = (await stub.CreateRun(create("0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c"))).run
    unnamed = [(await stub.CreateRun(create())).run.id for _ in range(2)]
    assert len({first.id, other.id, *unnamed}) == 4
    # The run as it is now: canceled since, a retry says so rather than making another.
    await stub.CancelRun(rpb.CancelRunRequest(run_id=first.id))
    clock.now += timedelta(hours=23, minutes=59)
    late = (await stub.CreateRun(create("7d0c1f0e-5a8b-4c1e-9f3a-2b6d8e4f1a90"))).run
    assert (late.id, late.status) == (first.id, rpb.RUN_STATUS_CANCELED)
    listed = await stub.ListRuns(rpb.ListRunsRequest())
    assert len(listed.runs) == 4


async def test_after_24_hours_the_id_creates_a_new_run(world) -> None:
    _, clock, stub = world
    first = (await stub.CreateRun(create("req_0123456789abcdef"))).run
    clock.now += timedelta(hours=24, seconds=1)
    second = (await stub.CreateRun(create("req_0123456789abcdef"))).run
    assert second.id != first.id
    assert (await stub.CreateRun(create("req_0123456789abcdef"))).run.id == second.id


async def test_request_ids_are_validated(world) -> None:
    _, _, stub = world
    for bad in ("short", "x" * 65, "has space 0123456789", "semi;colon-0123456789"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateRun(create(bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request_id: must be 16-64 characters")
    assert not (await stub.ListRuns(rpb.ListRunsRequest())).runs


async def test_a_refused_request_remembers_nothing(world) -> None:
    _, _, stub = world
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(create("req_0123456789abcdef", job="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    created = (await stub.CreateRun(create("req_0123456789abcdef"))).run
    assert created.status == rpb.RUN_STATUS_PENDING


async def test_a_request_id_reused_for_a_different_request_is_refused(world) -> None:
    _, _, stub = world
    rid = "3c5e7a9b-1d2f-4e6a-8b0c-9d1e2f3a4b5c"
    first = (await stub.CreateRun(create(rid))).run
    different = create(rid)
    different.run.tags["batch"] = "2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateRun(different)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"already created run {first.id} with different content" in (err.value.details() or "")
    # The retry that asks the same still gets its run; nothing else was made.
    assert (await stub.CreateRun(create(rid))).run.id == first.id
    assert [r.id for r in (await stub.ListRuns(rpb.ListRunsRequest())).runs] == [first.id]
