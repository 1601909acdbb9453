"""CodespecService over a real gRPC channel; health and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from muster.v1 import codespec_pb2 as pb
from muster.v1 import codespec_pb2_grpc as pb_grpc


def worker(name: str = "w", **kw) -> pb.Codespec:
    return pb.Codespec(name=name, kind=pb.CODESPEC_KIND_WORKER, image="img", **kw)


async def create(stub, spec: pb.Codespec) -> pb.CreateCodespecResponse:
    return await stub.CreateCodespec(pb.CreateCodespecRequest(codespec=spec))


async def test_create_get_versions(channel) -> None:
    stub = pb_grpc.CodespecServiceStub(channel)
    r1 = await create(stub, worker(endpoints={"http": 80}, env={"A": "1"}))
    assert (r1.codespec.version, r1.created) == (1, True)
    assert r1.codespec.created_at.seconds > 0
    r2 = await create(stub, worker(endpoints={"http": 80}, env={"A": "1"}))
    assert (r2.codespec.version, r2.created) == (1, False)
    r3 = await create(stub, worker(endpoints={"http": 80}, env={"A": "2"}))
    assert r3.codespec.version == 2
    got = await stub.GetCodespec(pb.GetCodespecRequest(name="w", version=1))
    assert got.codespec.env["A"] == "1"
    assert got.codespec.kind == pb.CODESPEC_KIND_WORKER
    assert dict(got.codespec.endpoints) == {"http": 80}
    latest = await stub.GetCodespec(pb.GetCodespecRequest(name="w"))
    assert latest.codespec.version == 2


async def test_max_replicas_round_trips_as_optional(channel) -> None:
    stub = pb_grpc.CodespecServiceStub(channel)
    r = await create(stub, worker(max_replicas=3))
    assert r.codespec.HasField("max_replicas") and r.codespec.max_replicas == 3
    r = await create(stub, worker(name="nomax"))
    assert not r.codespec.HasField("max_replicas")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (pb.Codespec(name="Bad", image="i"), "name:"),
        (pb.Codespec(name="j", image="i", endpoints={"http": 80}), "endpoints:"),
        (worker(buffers=pb.Buffers(inputs=["in"])), "buffers:"),
        (worker(endpoints={"http": 70000}), "endpoints.http:"),
        (pb.Codespec(name="x"), "image:"),
        (pb.Codespec(name="x", image="i", max_replicas=0), "maxReplicas:"),
        (
            pb.Codespec(
                name="x",
                image="i",
                resources=pb.Resources(requests=pb.ResourceQuantities(cpu="two")),
            ),
            "resources.requests.cpu:",
        ),
    ],
)
async def test_invalid_is_invalid_argument_and_stores_nothing(channel, spec, fragment) -> None:
    stub = pb_grpc.CodespecServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(stub, spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(fragment)
    listed = await stub.ListCodespecs(pb.ListCodespecsRequest())
    assert list(listed.codespecs) == []


async def test_not_found_names_latest_version(channel) -> None:
    stub = pb_grpc.CodespecServiceStub(channel)
    await create(stub, worker())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetCodespec(pb.GetCodespecRequest(name="w", version=7))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == (
        "The version '7' of codespec 'w' was not found. The latest version is '1'."
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetCodespec(pb.GetCodespecRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_paging_prefix_and_order(channel) -> None:
    stub = pb_grpc.CodespecServiceStub(channel)
    for name in ["b1", "a1", "c1", "a2", "zz"]:
        await create(stub, pb.Codespec(name=name, image="i"))
    names, token = [], ""
    while True:
        page = await stub.ListCodespecs(
            pb.ListCodespecsRequest(page_size=2, page_token=token, order=pb.CODESPEC_ORDER_NAME)
        )
        names += [c.name for c in page.codespecs]
        token = page.next_page_token
        if not token:
            break
    assert names == ["a1", "a2", "b1", "c1", "zz"]
    newest = await stub.ListCodespecs(pb.ListCodespecsRequest())
    assert [c.name for c in newest.codespecs] == ["zz", "a2", "c1", "a1", "b1"]
    only_a = await stub.ListCodespecs(pb.ListCodespecsRequest(prefix="a"))
    assert sorted(c.name for c in only_a.codespecs) == ["a1", "a2"]
    first = await stub.ListCodespecs(pb.ListCodespecsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:  # token reused with another filter
        await stub.ListCodespecs(
            pb.ListCodespecsRequest(page_size=1, page_token=first.next_page_token, prefix="a")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListCodespecs(pb.ListCodespecsRequest(page_token="garbage!"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_serving(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "muster.v1.CodespecService", "muster.v1.RunService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_four_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in reply.list_services_response.service}
        break
    assert {
        "muster.v1.CodespecService",
        "muster.v1.RunService",
        "muster.v1.NodeService",
        "muster.v1.AgentService",
    } <= names
