"""An async HTTP client for one buffer container (an access URL).

It speaks the Azure Blob subset that Tyger's data plane and muster's own
implement: create-only PUT with `Content-MD5` and the hash-chain metadata,
GET and HEAD. Error codes from `x-ms-error-code` become the exceptions of
`errors.py`, and the retries are Tyger's: an MD5 mismatch up to 5 times,
HTTP 500/503 up to 100 times with backoff, transport errors a few times, and
a create that meets UnauthorizedBlobOverwrite counts as done when the stored
blob carries the same MD5 and chain (the first attempt went through).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urlsplit

import aiohttp
import yarl

from muster.common.buffers import errors
from muster.common.buffers.format import (
    CONTENT_MD5_HEADER,
    ERROR_CODE_HEADER,
    HASH_CHAIN_HEADER,
)

MD5_RETRIES = 5
BUSY_RETRIES = 100
TRANSPORT_RETRIES = 6
RESPONSE_TIMEOUT = 100.0

_AUTH_DETAIL = re.compile(r"<AuthenticationErrorDetail>([^<]*)</AuthenticationErrorDetail>")

DETAIL_HEADER = "x-muster-error-detail"

RefreshUrl = Callable[[], Awaitable[str]]


def parse_access_url(text: str) -> str | None:
    """`text` if it is an absolute http(s) URL of a container, else None."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return text.strip()


def ssl_context_for(ca_file: str | None = None, ca_pem: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context that trusts `ca_file`/`ca_pem` (else the system CAs)."""
    if ca_file or ca_pem:
        return ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
    return ssl.create_default_context()


@dataclass(frozen=True)
class Blob:
    """A downloaded blob with the integrity values stored beside it."""

    data: bytes
    md5: str
    chain: str


@dataclass(frozen=True)
class BlobProperties:
    """What HEAD tells about a blob."""

    md5: str
    chain: str
    length: int


class _Backoff:
    """Growing pauses (100 ms doubling to 5 s) between retries of one request."""

    def __init__(self) -> None:
        self.pause = 0.1

    async def wait(self) -> None:
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, 5.0)


class ContainerClient:
    """Blob requests against one container, with the access URL's query attached."""

    def __init__(
        self,
        access_url: str,
        *,
        ca_file: str | None = None,
        ca_pem: str | None = None,
        connections: int = 64,
        refresh: RefreshUrl | None = None,
    ) -> None:
        self._set_url(access_url)
        self._refresh = refresh
        self._generation = 0
        self._refresh_lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | bool = True
        if self._base.startswith("https:"):
            self._ssl = ssl_context_for(ca_file, ca_pem)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _set_url(self, access_url: str) -> None:
        if parse_access_url(access_url) is None:
            raise errors.InvalidAccessUrlError("not an http(s) URL")
        base, _, query = access_url.strip().partition("?")
        self._base = base.rstrip("/")
        self._query = query

    @property
    def container(self) -> str:
        """The container (buffer) id: the last segment of the URL's path."""
        return self._base.rsplit("/", 1)[-1]

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=RESPONSE_TIMEOUT)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ContainerClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def url(self, blob: str) -> yarl.URL:
        """The signed URL of one blob (the query is kept exactly as issued)."""
        text = f"{self._base}/{blob}"
        if self._query:
            text += f"?{self._query}"
        return yarl.URL(text, encoded=True)

    async def _send(
        self, method: str, blob: str, data: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, answered once more after an access-URL refresh on
        AuthenticationFailed when a refresher is known."""
        for attempt in (0, 1):
            generation = self._generation
            status, head, body = await self._request(method, blob, data, headers)
            refreshable = status == 403 and head.get(ERROR_CODE_HEADER) == "AuthenticationFailed"
            if not refreshable or self._refresh is None or attempt:
                return status, head, body
            await self._refresh_url(generation)
        raise AssertionError("unreachable")

    async def _refresh_url(self, seen_generation: int) -> None:
        assert self._refresh is not None
        async with self._refresh_lock:
            if self._generation == seen_generation:
                self._set_url(await self._refresh())
                self._generation += 1

    async def _request(
        self, method: str, blob: str, data: bytes | None, headers: dict | None
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange, retrying transport errors with backoff."""
        all_headers = {"x-ms-version": "2021-08-06", "Date": formatdate(usegmt=True)}
        all_headers.update(headers or {})
        backoff = _Backoff()
        for attempt in range(TRANSPORT_RETRIES + 1):
            try:
                async with self._session_now().request(
                    method, self.url(blob), data=data, headers=all_headers
                ) as resp:
                    body = await resp.read()
                    return resp.status, _lower(resp.headers), body
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
                if attempt == TRANSPORT_RETRIES:
                    raise
            await backoff.wait()
        raise AssertionError("unreachable")

    async def put_blob(self, blob: str, data: bytes, md5: str, chain: str | None = None) -> None:
        """Create `blob` (never replace it), with Tyger's retries."""
        headers = {"x-ms-blob-type": "BlockBlob", CONTENT_MD5_HEADER: md5}
        if chain:
            headers[HASH_CHAIN_HEADER] = chain
        backoff, md5_failures, busy = _Backoff(), 0, 0
        while True:
            status, head, body = await self._send("PUT", blob, data, headers)
            if status == 201:
                return
            err = _error_for(status, head, body)
            if isinstance(err, errors.Md5MismatchError) and md5_failures < MD5_RETRIES:
                md5_failures += 1
                continue
            if isinstance(err, errors.ServerBusyError) and busy < BUSY_RETRIES:
                busy += 1
                await backoff.wait()
                continue
            if isinstance(err, errors.BlobOverwriteError):
                await self._accept_existing(blob, md5, chain)
                return
            raise err

    async def _accept_existing(self, blob: str, md5: str, chain: str | None) -> None:
        """A create met an existing blob: fine if it is this very blob (a retried
        request whose first attempt went through), else the buffer was written."""
        props = await self.head_blob(blob)
        if props is None or props.md5 != md5 or props.chain != (chain or ""):
            raise errors.BufferOverwriteError()

    async def head_blob(self, blob: str) -> BlobProperties | None:
        """The blob's stored MD5, chain and length, or None if it does not exist."""
        backoff = _Backoff()
        for _ in range(BUSY_RETRIES + 1):
            status, head, body = await self._send("HEAD", blob)
            if status == 200:
                return BlobProperties(
                    md5=head.get(CONTENT_MD5_HEADER.lower(), ""),
                    chain=head.get(HASH_CHAIN_HEADER, ""),
                    length=int(head.get("content-length", "0")),
                )
            err = _error_for(status, head, body)
            if isinstance(err, errors.BlobNotFoundError):
                return None
            if not isinstance(err, errors.ServerBusyError):
                raise err
            await backoff.wait()
        raise errors.ServerBusyError(f"the data plane stayed busy for HEAD {blob}")

    async def get_blob(self, blob: str) -> Blob:
        """Download `blob` and check its body against Content-MD5 (retried 5 times).

        Raises BlobNotFoundError when it does not exist (yet)."""
        backoff, md5_failures, busy = _Backoff(), 0, 0
        while True:
            status, head, body = await self._send("GET", blob)
            err = _error_for(status, head, body) if status != 200 else None
            if err is None:
                err = await _check_body(blob, head, body)
                if err is None:
                    md5 = head[CONTENT_MD5_HEADER.lower()]
                    return Blob(body, md5, head.get(HASH_CHAIN_HEADER, ""))
            if isinstance(err, errors.Md5MismatchError) and md5_failures < MD5_RETRIES:
                md5_failures += 1
                continue
            if isinstance(err, errors.ServerBusyError) and busy < BUSY_RETRIES:
                busy += 1
                await backoff.wait()
                continue
            raise err


def _lower(headers: object) -> dict[str, str]:
    """Response headers with lower-case names (HTTP names are case-insensitive)."""
    return {k.lower(): v for k, v in headers.items()}  # type: ignore[attr-defined]  # a multidict


async def _check_body(blob: str, head: dict[str, str], body: bytes) -> Exception | None:
    """An error if the body's length or MD5 disagrees with the headers."""
    expected = head.get(CONTENT_MD5_HEADER.lower())
    if not expected:
        return errors.BufferDataError(f"blob {blob}: the Content-MD5 header is missing")
    if head.get("content-length") is not None and int(head["content-length"]) != len(body):
        return errors.BufferDataError(f"blob {blob}: the body was cut short")
    digest = await _md5(body)
    try:
        same = digest == b64decode(expected, validate=True)
    except ValueError:
        same = False
    return None if same else errors.Md5MismatchError(f"blob {blob}: MD5 mismatch")


async def _md5(data: bytes) -> bytes:
    """MD5 off the event loop for large bodies (hashlib releases the GIL)."""
    if len(data) < 256 * 1024:
        return hashlib.md5(data).digest()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: hashlib.md5(data).digest())


def _error_for(status: int, head: dict[str, str], body: bytes) -> Exception:
    """The exception an error response stands for."""
    code = head.get(ERROR_CODE_HEADER, "")
    detail = body[:2000].decode("utf-8", "replace").strip()
    if status == 404 and code == "BlobNotFound":
        return errors.BlobNotFoundError("blob not found")
    if status == 404 and code == "ContainerNotFound":
        return errors.BufferNotFoundError()
    if status == 400 and code == "Md5Mismatch":
        return errors.Md5MismatchError("MD5 mismatch")
    if status == 403 and code == "UnauthorizedBlobOverwrite":
        return errors.BlobOverwriteError("unauthorized blob overwrite")
    if status == 403 and code == "AuthorizationPermissionMismatch":
        return errors.PermissionMismatchError()
    if status == 403 and code == "AuthenticationFailed":
        found = _AUTH_DETAIL.search(detail)
        reason = found.group(1).strip() if found else head.get(DETAIL_HEADER, "")
        return errors.InvalidAccessUrlError(reason)
    if status in (500, 503):
        return errors.ServerBusyError(f"the data plane answered {status}")
    return errors.BufferDataError(f"unexpected status code {status}: {code or detail}")
