"""The embedded data plane: buffers' bytes over HTTP, in the Azure Blob subset
that Tyger's local data plane serves, so a muster access URL works with
Tyger's reader and writer and the other way round.

    HEAD|PUT|DELETE  /containers/{id}             container exists / create / delete
    PUT              /containers/{id}/{blob path} create a blob (never replace)
    GET|HEAD         /containers/{id}/{blob path} a blob with Content-MD5 and x-ms-meta-*

Every request carries a signed query (see `sas.py`). Errors are a status
and an `x-ms-error-code`: BlobNotFound, ContainerNotFound (404),
Md5Mismatch (400), UnauthorizedBlobOverwrite, AuthenticationFailed,
AuthorizationPermissionMismatch (403). File work runs in a thread executor
so one slow disk operation never stalls the other transfers.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import pathlib
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from controlplane.dataplane import sas
from controlplane.dataplane.storage import BlobStore, ContainerGone, StagedBlob
from controlplane.dataplane.storage import valid_blob_path as _valid_blob
from controlplane.dataplane.storage import valid_container as _valid_container
from muster.common.buffers.format import END_BLOB, STATUS_FAILED, end_marker

log = logging.getLogger(__name__)
T = TypeVar("T")
ERROR_CODE = "x-ms-error-code"
META_PREFIX = "x-ms-meta-"
DETAIL_HEADER = "x-muster-error-detail"
STAGE_CHUNK = 1 << 20
MAX_BLOB_BYTES = 4000 * 1024 * 1024  # Azure's limit for one block-blob upload


def _error(status: int, code: str, detail: str = "", *, head: bool = False) -> web.Response:
    """An Azure-style error: the code in a header, and an XML body for GET/PUT."""
    headers = {ERROR_CODE: code}
    if detail:
        headers[DETAIL_HEADER] = detail  # HEAD answers have no body to carry it
    if head:
        return web.Response(status=status, headers=headers)
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
    if code == "AuthenticationFailed":
        body += f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>"
    body += f"<Message>{detail or code}</Message></Error>"
    return web.Response(status=status, headers=headers, text=body, content_type="application/xml")


class DataPlane:
    """An HTTP server over a BlobStore, and the BufferStorage the control plane calls."""

    def __init__(
        self, root: pathlib.Path, key: bytes, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._root = pathlib.Path(root)
        self._key = key
        self._ssl = ssl_context
        self._store: BlobStore | None = None
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = BlobStore(self._root)
        return self._store

    @property
    def base_url(self) -> str:
        """`scheme://host:port` that access URLs start with (after start())."""
        return self._base_url

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ---- lifecycle ----

    async def start(self, host: str, port: int, public_host: str | None = None) -> int:
        """Listen on host:port (0 = any free port); returns the bound port."""
        await self._io(lambda: self.store)
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("HEAD", "/containers/{container}", self._head_container)
        app.router.add_route("PUT", "/containers/{container}", self._put_container)
        app.router.add_route("DELETE", "/containers/{container}", self._delete_container)
        app.router.add_route("PUT", "/containers/{container}/{blob:.+}", self._put_blob)
        app.router.add_get("/containers/{container}/{blob:.+}", self._get_blob, allow_head=True)
        app.router.add_get("/healthcheck", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl, reuse_address=True)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp keeps the bound socket private
        self._base_url = _base_url(public_host or host, bound, self._ssl is not None)
        log.info("data plane listening on %s", self._base_url)
        return bound

    async def stop(self) -> None:
        """Stop listening and finish (or drop) requests in progress."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- BufferStorage ----

    async def create(self, buffer_id: str) -> None:
        """Make the buffer's container (idempotent)."""
        _check_container(buffer_id)
        await self._io(self.store.create, buffer_id)

    async def delete(self, buffer_id: str) -> None:
        """Remove the container and every blob (idempotent)."""
        _check_container(buffer_id)
        await self._io(self.store.delete, buffer_id)

    async def mark_failed(self, buffer_id: str) -> None:
        """Write `.bufferend` failed unless some end marker exists (create-only).
        A buffer whose container is gone has nobody left to tell."""
        _check_container(buffer_id)
        await self._io(self._mark_failed_sync, buffer_id)

    def _mark_failed_sync(self, buffer_id: str) -> None:
        if not self.store.exists(buffer_id):
            return
        staged = self.store.stage()
        staged.append([end_marker(STATUS_FAILED)])
        md5 = staged.finish()
        try:
            self.store.commit(buffer_id, END_BLOB, staged, md5, {})
        except ContainerGone:
            pass

    def access_url(self, buffer_id: str, *, writable: bool, expires_at: datetime.datetime) -> str:
        """A URL granting read (and, if writable, create) on the buffer's blobs."""
        _check_container(buffer_id)
        if not self._base_url:
            raise RuntimeError("the data plane has not been started")
        sp = "cr" if writable else "r"
        query = sas.sign_query(self._key, buffer_id, sp, expires_at)
        return f"{self._base_url}/containers/{buffer_id}?{query}"

    # ---- HTTP ----

    def _authorize(
        self, request: web.Request, resource: sas.Resource, action: sas.Action
    ) -> web.Response | None:
        container = request.match_info["container"]
        verdict, why = sas.verify(self._key, container, resource, action, request.query)
        head = request.method == "HEAD"
        if verdict is sas.Verdict.INVALID:
            return _error(403, "AuthenticationFailed", why, head=head)
        if verdict is sas.Verdict.NOT_ALLOWED:
            return _error(403, "AuthorizationPermissionMismatch", why, head=head)
        if not _valid_container(container):
            return _error(400, "InvalidContainerName", head=head)
        blob = request.match_info.get("blob")
        if blob is not None and not _valid_blob(blob):
            return _error(400, "InvalidBlobName", head=head)
        return None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="Healthy")

    async def _head_container(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, sas.Resource.CONTAINER, sas.Action.READ)
        if denied:
            return denied
        if not await self._io(self.store.exists, request.match_info["container"]):
            return _error(404, "ContainerNotFound", head=True)
        return web.Response(status=200)

    async def _put_container(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, sas.Resource.CONTAINER, sas.Action.CREATE)
        if denied:
            return denied
        await self._io(self.store.create, request.match_info["container"])
        return web.Response(status=201)

    async def _delete_container(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, sas.Resource.CONTAINER, sas.Action.DELETE)
        if denied:
            return denied
        if not await self._io(self.store.delete, request.match_info["container"]):
            return _error(404, "ContainerNotFound")
        return web.Response(status=200)

    async def _put_blob(self, request: web.Request) -> web.Response:
        denied = self._authorize(request, sas.Resource.BLOB, sas.Action.CREATE)
        if denied:
            return denied
        container, blob = request.match_info["container"], request.match_info["blob"]
        if not await self._io(self.store.exists, container):
            return _error(404, "ContainerNotFound")
        if (request.content_length or 0) > MAX_BLOB_BYTES:
            return _error(413, "RequestBodyTooLarge")
        staged = await self._io(self.store.stage)
        try:
            md5 = await self._receive(request, staged)
        except BaseException:
            await self._io(staged.discard)
            raise
        claimed = request.headers.get("Content-MD5")
        if claimed is not None and claimed != md5:
            await self._io(staged.discard)
            return _error(400, "Md5Mismatch", "the body does not match Content-MD5")
        meta = {
            name[len(META_PREFIX) :].lower(): value
            for name, value in request.headers.items()
            if name.lower().startswith(META_PREFIX)
        }
        try:
            created = await self._io(self.store.commit, container, blob, staged, md5, meta)
        except ContainerGone:
            return _error(404, "ContainerNotFound")
        if not created:
            return _error(403, "UnauthorizedBlobOverwrite", "the blob already exists")
        return web.Response(status=201, headers={"Content-MD5": md5})

    async def _receive(self, request: web.Request, staged: StagedBlob) -> str:
        """Stream the body into staging, about a megabyte per executor call."""
        pending: list[bytes] = []
        size = received = 0
        async for chunk in request.content.iter_any():
            pending.append(chunk)
            size += len(chunk)
            received += len(chunk)
            if received > MAX_BLOB_BYTES:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_BLOB_BYTES, actual_size=received)
            if size >= STAGE_CHUNK:
                await self._io(staged.append, pending)
                pending, size = [], 0
        if pending:
            await self._io(staged.append, pending)
        return await self._io(staged.finish)

    async def _get_blob(self, request: web.Request) -> web.StreamResponse:
        denied = self._authorize(request, sas.Resource.BLOB, sas.Action.READ)
        if denied:
            return denied
        container, blob = request.match_info["container"], request.match_info["blob"]
        head = request.method == "HEAD"
        if not await self._io(self.store.exists, container):
            return _error(404, "ContainerNotFound", head=head)
        info = await self._io(self.store.info, container, blob)
        if info is None:
            return _error(404, "BlobNotFound", head=head)
        headers = {"Content-MD5": info.md5, "x-ms-blob-type": "BlockBlob"}
        headers.update({META_PREFIX + k: v for k, v in info.metadata.items()})
        if head:
            headers["Content-Length"] = str(info.size)
            return web.Response(status=200, headers=headers)
        headers["Content-Type"] = "application/octet-stream"
        return web.FileResponse(info.path, headers=headers)


def _check_container(buffer_id: str) -> None:
    if not _valid_container(buffer_id):
        raise ValueError(f"invalid buffer id {buffer_id!r}")


def _base_url(host: str, port: int, tls: bool) -> str:
    """The URL prefix clients use; a wildcard address is published as loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        host = quote(host, safe=".-")
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def _serve(root: pathlib.Path, key_file: pathlib.Path, host: str, port: int) -> None:
    from controlplane.dataplane.sas import load_or_create_key

    plane = DataPlane(root, load_or_create_key(key_file))
    bound = await plane.start(host, port)
    print(bound, flush=True)  # the parent (a benchmark, a test) learns the port
    try:
        await asyncio.Event().wait()
    finally:
        await plane.stop()


def main(argv: list[str] | None = None) -> None:
    """Run a data plane on its own (plain HTTP): `python -m controlplane.dataplane.server`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", type=pathlib.Path, required=True)
    parser.add_argument("--key-file", type=pathlib.Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.root, args.key_file, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
