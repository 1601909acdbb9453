"""BufferService over real gRPC (in-process control plane, no data plane):
the status code and message of every kind of bad request, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from muster.v1 import buffer_pb2 as pb
from muster.v1 import buffer_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MISSING = "a" * 26


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_the_whole_lifecycle_over_grpc(channel) -> None:
    stub = pb_grpc.BufferServiceStub(channel)
    made = (await stub.CreateBuffer(pb.CreateBufferRequest(tags={"a": "1"}, ttl_seconds=60))).buffer
    assert made.HasField("expires_at") and made.etag and made.location == "local"
    got = (await stub.GetBuffer(pb.GetBufferRequest(id=made.id))).buffer
    assert got == made
    stale = made.etag
    updated = (
        await stub.UpdateBuffer(pb.UpdateBufferRequest(id=made.id, tags={"b": "2"}, etag=stale))
    ).buffer
    assert dict(updated.tags) == {"a": "1", "b": "2"}
    code, detail = await code_of(
        stub.UpdateBuffer(pb.UpdateBufferRequest(id=made.id, clear_tags=True, etag=stale))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "has changed" in detail
    forever = await stub.UpdateBuffer(pb.UpdateBufferRequest(id=made.id, ttl_seconds=0))
    assert not forever.buffer.HasField("expires_at")

    deleted = await stub.DeleteBuffers(pb.DeleteBuffersRequest(ids=[made.id], ttl_seconds=5))
    assert deleted.buffers[0].soft_deleted
    code, _ = await code_of(stub.GetBuffer(pb.GetBufferRequest(id=made.id)))
    assert code == grpc.StatusCode.NOT_FOUND
    count = await stub.CountBuffers(
        pb.CountBuffersRequest(filter=pb.BufferFilter(soft_deleted=True))
    )
    assert count.count == 1
    restored = await stub.RestoreBuffers(pb.RestoreBuffersRequest(tags={"a": "1"}))
    assert [b.id for b in restored.buffers] == [made.id]
    await stub.DeleteBuffers(pb.DeleteBuffersRequest(all=True))
    purged = await stub.DeleteBuffers(pb.DeleteBuffersRequest(ids=[made.id], purge=True))
    assert [b.id for b in purged.buffers] == [made.id]
    listed = await stub.ListBuffers(
        pb.ListBuffersRequest(filter=pb.BufferFilter(soft_deleted=True))
    )
    assert list(listed.buffers) == []


async def test_paging_over_grpc(channel) -> None:
    stub = pb_grpc.BufferServiceStub(channel)
    ids = {(await stub.CreateBuffer(pb.CreateBufferRequest())).buffer.id for _ in range(5)}
    seen, token = [], ""
    while True:
        page = await stub.ListBuffers(pb.ListBuffersRequest(page_size=2, page_token=token))
        seen += [b.id for b in page.buffers]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


@pytest.mark.parametrize(
    ("method", "request_", "code", "fragment"),
    [
        ("GetBuffer", pb.GetBufferRequest(), INVALID, "an empty id is not a buffer id"),
        ("GetBuffer", pb.GetBufferRequest(id="x" * 100_000), INVALID, "is not a buffer id"),
        ("GetBuffer", pb.GetBufferRequest(id=MISSING), grpc.StatusCode.NOT_FOUND, "was not found"),
        ("CreateBuffer", pb.CreateBufferRequest(ttl_seconds=-1), INVALID, "negative"),
        ("CreateBuffer", pb.CreateBufferRequest(ttl_seconds=2**63 - 1), INVALID, "at most"),
        ("CreateBuffer", pb.CreateBufferRequest(tags={"": "x"}), INVALID, "tag keys"),
        ("CreateBuffer", pb.CreateBufferRequest(tags={"k": "\x00"}), INVALID, "tag values"),
        ("ListBuffers", pb.ListBuffersRequest(page_size=-1), INVALID, "negative"),
        ("ListBuffers", pb.ListBuffersRequest(page_token="!!"), INVALID, "page token"),
        ("ListBuffers", pb.ListBuffersRequest(page_token="x" * 5000), INVALID, "page token"),
        (
            "CountBuffers",
            pb.CountBuffersRequest(filter=pb.BufferFilter(exclude_tags={"a b": "c"})),
            INVALID,
            "exclude_tags",
        ),
        ("UpdateBuffer", pb.UpdateBufferRequest(id=MISSING, ttl_seconds=-3), INVALID, "negative"),
        ("UpdateBuffer", pb.UpdateBufferRequest(id=MISSING), grpc.StatusCode.NOT_FOUND, "found"),
        ("DeleteBuffers", pb.DeleteBuffersRequest(), INVALID, "exactly one"),
        (
            "DeleteBuffers",
            pb.DeleteBuffersRequest(ids=[MISSING], all=True),
            INVALID,
            "exactly one",
        ),
        (
            "DeleteBuffers",
            pb.DeleteBuffersRequest(all=True, purge=True, ttl_seconds=1),
            INVALID,
            "takes no TTL",
        ),
        (
            "DeleteBuffers",
            pb.DeleteBuffersRequest(all=True, filter=pb.BufferFilter(soft_deleted=True)),
            INVALID,
            "set purge",
        ),
        ("DeleteBuffers", pb.DeleteBuffersRequest(ids=[MISSING]), grpc.StatusCode.NOT_FOUND, ""),
        ("DeleteBuffers", pb.DeleteBuffersRequest(ids=["x"] * 2000), INVALID, "buffer id"),
        (
            "DeleteBuffers",
            pb.DeleteBuffersRequest(ids=[f"{i:a>26}" for i in range(1001)]),
            INVALID,
            "at most 1000",
        ),
        ("RestoreBuffers", pb.RestoreBuffersRequest(), INVALID, "exactly one"),
        ("GetBufferAccess", pb.GetBufferAccessRequest(id=MISSING), grpc.StatusCode.NOT_FOUND, ""),
        (
            "GetBufferAccess",
            pb.GetBufferAccessRequest(id=MISSING, ttl_seconds=2**40),
            INVALID,
            "30-3600",
        ),
    ],
)
async def test_bad_requests_get_the_right_code(
    channel, method: str, request_, code: grpc.StatusCode, fragment: str
) -> None:
    stub = pb_grpc.BufferServiceStub(channel)
    got, detail = await code_of(getattr(stub, method)(request_))
    assert got == code, (got, detail)
    assert fragment in detail and len(detail) < 300


async def test_access_without_a_data_plane_is_unavailable(channel) -> None:
    stub = pb_grpc.BufferServiceStub(channel)
    made = (await stub.CreateBuffer(pb.CreateBufferRequest())).buffer
    code, detail = await code_of(
        stub.GetBufferAccess(pb.GetBufferAccessRequest(id=made.id, writable=True))
    )
    assert code == grpc.StatusCode.UNAVAILABLE and "no data plane configured" in detail
