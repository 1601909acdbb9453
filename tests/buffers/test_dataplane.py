"""The data plane over real HTTP: the Azure Blob subset, create-only blobs,
signed URLs, and the BufferStorage methods the control plane calls."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import stat
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl

from controlplane.dataplane import sas
from controlplane.dataplane.server import DataPlane
from controlplane.dataplane.storage import valid_blob_path
from muster.common.buffers import errors
from muster.common.buffers.client import ContainerClient
from muster.common.buffers.format import new_buffer_id
from tests.buffers.conftest import KEY, in_an_hour


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def blob_url(container_url: str, blob: str) -> yarl.URL:
    base, _, query = container_url.partition("?")
    return yarl.URL(f"{base}/{blob}?{query}", encoded=True)


async def test_put_get_head(plane, buffer_id, http) -> None:
    url = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    headers = {"Content-MD5": md5(b"abc"), "x-ms-meta-cumulative_hash_chain": "CHAIN"}
    async with http.put(blob_url(url, "00/000"), data=b"abc", headers=headers) as resp:
        assert resp.status == 201
    async with http.get(blob_url(url, "00/000")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"abc"
        assert resp.headers["Content-MD5"] == md5(b"abc")
        assert resp.headers["x-ms-meta-cumulative_hash_chain"] == "CHAIN"
        assert resp.headers["Content-Length"] == "3"
    async with http.head(blob_url(url, "00/000")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "3"
        assert resp.headers["Content-MD5"] == md5(b"abc")


async def test_errors_by_code(plane, buffer_id, http, tmp_path) -> None:
    url = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    async with http.get(blob_url(url, "00/000")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "BlobNotFound")
    async with http.head(blob_url(url, "00/000")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "BlobNotFound")
    bad = {"Content-MD5": md5(b"other")}
    async with http.put(blob_url(url, "00/000"), data=b"abc", headers=bad) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (400, "Md5Mismatch")
    async with http.get(blob_url(url, "00/000")) as resp:
        assert resp.status == 404, "a rejected body must not become visible"
    assert list((tmp_path / "dataplane" / "staging").iterdir()) == []
    other = new_buffer_id()
    missing = plane.access_url(other, writable=True, expires_at=in_an_hour())
    async with http.put(blob_url(missing, "00/000"), data=b"x") as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "ContainerNotFound")
    async with http.get(blob_url(missing, "00/000")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "ContainerNotFound")


async def test_overwrite_is_refused(plane, buffer_id, http) -> None:
    url = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    async with http.put(blob_url(url, ".bufferstart"), data=b"first") as resp:
        assert resp.status == 201
    async with http.put(blob_url(url, ".bufferstart"), data=b"second") as resp:
        assert resp.status == 403
        assert resp.headers["x-ms-error-code"] == "UnauthorizedBlobOverwrite"
    async with http.get(blob_url(url, ".bufferstart")) as resp:
        assert await resp.read() == b"first"


async def test_expired_forged_and_foreign_urls(plane, buffer_id, http) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    start = past - datetime.timedelta(minutes=5)
    query = sas.sign_query(KEY, buffer_id, "cr", past, starts_at=start)
    expired = f"{plane.base_url}/containers/{buffer_id}?{query}"
    async with http.get(blob_url(expired, ".bufferstart")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (403, "AuthenticationFailed")
        assert "expired" in await resp.text()
    good = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    forged = good.replace("sp=cr", "sp=crD")
    async with http.get(blob_url(forged, ".bufferstart")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (403, "AuthenticationFailed")
    other = new_buffer_id()
    await plane.create(other)
    foreign = good.replace(buffer_id, other)
    async with http.get(blob_url(foreign, ".bufferstart")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (403, "AuthenticationFailed")
    unsigned = f"{plane.base_url}/containers/{buffer_id}/.bufferstart"
    async with http.get(unsigned) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (403, "AuthenticationFailed")


async def test_read_only_url_cannot_write(plane, buffer_id, http) -> None:
    url = plane.access_url(buffer_id, writable=False, expires_at=in_an_hour())
    assert "sp=r&" in url
    async with http.put(blob_url(url, ".bufferstart"), data=b"x") as resp:
        assert resp.status == 403
        assert resp.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    async with ContainerClient(url) as client:
        with pytest.raises(errors.PermissionMismatchError):
            await client.put_blob(".bufferstart", b"x", md5(b"x"))


async def test_container_operations_need_container_permissions(plane, http) -> None:
    bid = new_buffer_id()
    base = f"{plane.base_url}/containers/{bid}"

    def signed(sp: str) -> yarl.URL:
        return yarl.URL(f"{base}?{sas.sign_query(KEY, bid, sp, in_an_hour())}", encoded=True)

    async with http.head(signed("R")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "ContainerNotFound")
    async with http.put(signed("R")) as resp:
        assert resp.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    async with http.put(signed("cr")) as resp:
        assert resp.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    async with http.put(signed("C")) as resp:
        assert resp.status == 201
    async with http.head(signed("R")) as resp:
        assert resp.status == 200
    async with http.delete(signed("D")) as resp:
        assert resp.status == 200
    async with http.delete(signed("D")) as resp:
        assert (resp.status, resp.headers["x-ms-error-code"]) == (404, "ContainerNotFound")


async def test_mark_failed_never_replaces_a_marker(plane, buffer_id, tmp_path) -> None:
    end = tmp_path / "dataplane" / "data" / buffer_id / ".bufferend"
    await plane.mark_failed(buffer_id)
    assert end.read_bytes() == b'{"status":"failed"}'
    await plane.mark_failed(buffer_id)  # idempotent
    assert end.read_bytes() == b'{"status":"failed"}'

    done = new_buffer_id()
    await plane.create(done)
    url = plane.access_url(done, writable=True, expires_at=in_an_hour())
    complete = b'{"status":"complete"}'
    async with ContainerClient(url) as client:
        await client.put_blob(".bufferend", complete, md5(complete))
    await plane.mark_failed(done)
    assert (tmp_path / "dataplane" / "data" / done / ".bufferend").read_bytes() == complete
    await plane.mark_failed(new_buffer_id())  # a buffer without a container: nothing to do


async def test_create_and_delete_are_idempotent(plane, tmp_path) -> None:
    bid = new_buffer_id()
    await plane.create(bid)
    await plane.create(bid)
    url = plane.access_url(bid, writable=True, expires_at=in_an_hour())
    async with ContainerClient(url) as client:
        await client.put_blob("00/000", b"x", md5(b"x"), "c")
        await plane.delete(bid)
        await plane.delete(bid)
        assert not (tmp_path / "dataplane" / "data" / bid).exists()
        assert not (tmp_path / "dataplane" / "metadata" / bid).exists()
        with pytest.raises(errors.BufferNotFoundError):
            await client.get_blob("00/000")
        with pytest.raises(errors.BufferNotFoundError):
            await client.put_blob("00/001", b"x", md5(b"x"), "c")
    assert not (tmp_path / "dataplane" / "data" / bid).exists(), "a write must not resurrect it"


def test_signing_key_file(tmp_path) -> None:
    path = tmp_path / "secrets" / "dataplane.key"
    key = sas.load_or_create_key(path)
    assert len(key) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sas.load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["dataplane.key"]


def test_sas_verdicts() -> None:
    now = datetime.datetime.now(datetime.UTC)
    query = dict(
        pair.split("=", 1)
        for pair in sas.sign_query(KEY, "abc", "r", now + datetime.timedelta(minutes=1)).split("&")
    )
    from urllib.parse import unquote

    query = {k: unquote(v) for k, v in query.items()}
    read, create = sas.Action.READ, sas.Action.CREATE
    blob = sas.Resource.BLOB
    assert sas.verify(KEY, "abc", blob, read, query)[0] is sas.Verdict.ALLOWED
    assert sas.verify(KEY, "abc", blob, create, query)[0] is sas.Verdict.NOT_ALLOWED
    assert sas.verify(KEY, "abd", blob, read, query)[0] is sas.Verdict.INVALID
    assert sas.verify(b"x" * 32, "abc", blob, read, query)[0] is sas.Verdict.INVALID
    later = now + datetime.timedelta(minutes=2)
    assert sas.verify(KEY, "abc", blob, read, query, now=later)[0] is sas.Verdict.INVALID
    assert sas.permissions(blob, read | create) == "cr"
    assert query["st"].endswith("Z") and len(query["st"]) == len("2024-01-02T03:04:05Z")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("00/000", True),
        (".bufferstart", True),
        ("02/00/010", True),
        ("../x", False),
        ("00/../x", False),
        ("", False),
        ("a//b", False),
        ("/a", False),
    ],
)
def test_blob_path_validation(path: str, ok: bool) -> None:
    assert valid_blob_path(path) is ok


async def test_access_url_shape(tmp_path) -> None:
    dp = DataPlane(tmp_path / "dp", KEY)
    with pytest.raises(RuntimeError):
        dp.access_url(new_buffer_id(), writable=True, expires_at=in_an_hour())
    port = await dp.start("127.0.0.1", 0, public_host="localhost")
    try:
        url = dp.access_url("abc", writable=True, expires_at=in_an_hour())
        assert url.startswith(f"http://localhost:{port}/containers/abc?sv=0.1.0&sp=cr&st=")
        assert "&se=" in url and "&sig=" in url
    finally:
        await dp.stop()
