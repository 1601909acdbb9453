"""`muster buffer read|write`: move a buffer's bytes, as `tyger buffer read|write`.

The target is an access URL, a file holding one (as a run's access files
do), or a buffer id, for which the control plane issues a URL
(GetBufferAccess) and issues another when the data plane says it expired.
A URL needs no login. Data goes from stdin (or -i FILE) and to stdout (or
-o FILE); errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, BinaryIO, cast

import click
import grpc

from muster.common import clientconfig
from muster.common.buffers import errors
from muster.common.buffers.client import ContainerClient, parse_access_url
from muster.common.buffers.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_READ_DOP,
    DEFAULT_WRITE_DOP,
    parse_block_size,
    parse_go_duration,
)
from muster.common.buffers.reader import read_buffer
from muster.common.buffers.writer import write_buffer
from muster.common.clientconfig import ConfigError
from muster.v1 import buffer_pb2 as pb
from muster.v1 import buffer_pb2_grpc as pb_grpc
from muster_cli.app import CONTEXT, address, server_option
from muster_cli.client import channel, client_config, config_path, fail, open_channel

ACCESS_FILE_MAX = 2 * 1024
TARGET = "{ BUFFER_ID | BUFFER_SAS_URL | FILE_WITH_SAS_URL }"


def url_from_target(target: str) -> str | None:
    """The access URL `target` is or holds (a small file's trimmed content), if any."""
    url = parse_access_url(target)
    if url is not None:
        return url
    with contextlib.suppress(OSError):
        if os.path.isfile(target) and os.path.getsize(target) < ACCESS_FILE_MAX:
            with open(target, encoding="utf-8", errors="replace") as f:
                return parse_access_url(f.read().rstrip(" \r\n"))
    return None


def _request_url(server: str, buffer_id: str, writable: bool) -> str:
    """A fresh access URL from the control plane (raises grpc.RpcError)."""
    ch = open_channel(server)
    try:
        reply = pb_grpc.BufferServiceStub(ch).GetBufferAccess(
            pb.GetBufferAccessRequest(id=buffer_id, writable=writable), timeout=30
        )
        return reply.uri
    finally:
        ch.close()


def _refresher(server: str, buffer_id: str, writable: bool) -> Callable[[], Awaitable[str]]:
    """How the client gets a new URL when the data plane says the old one expired."""

    async def refresh() -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, _request_url, server, buffer_id, writable)
        except grpc.RpcError as err:
            detail = err.details() or err.code().name
            raise errors.InvalidAccessUrlError(f"could not get a new one: {detail}") from None

    return refresh


def open_client(
    ctx: click.Context, target: str, leaf: str | None, writable: bool
) -> ContainerClient:
    """A ContainerClient for `target`, trusting the credential file's CA for https."""
    url = url_from_target(target)
    if url is not None:
        return ContainerClient(url, ca_pem=_ca_pem_if_any())
    config = client_config()
    ca_pem = config.ca_pem if config and config.ca_pem else None
    server = address(ctx, leaf)
    with channel(server) as ch:
        reply = pb_grpc.BufferServiceStub(ch).GetBufferAccess(
            pb.GetBufferAccessRequest(id=target, writable=writable), timeout=30
        )
    refresh = _refresher(server, target, writable)
    return ContainerClient(reply.uri, ca_pem=ca_pem, refresh=refresh)


def _ca_pem_if_any() -> str | None:
    """The credential file's CA, if there is a usable file: a URL needs no login."""
    path = config_path()
    if path is None:
        return None
    try:
        return clientconfig.load(path).ca_pem or None
    except ConfigError:
        return None


def _run(work: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run the transfer; its errors become one line, Ctrl-C exit code 130."""
    try:
        asyncio.run(work())
    except errors.BufferDataError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        fail("canceled", 130)


@contextlib.contextmanager
def _opened(path: str | None, mode: str, std: BinaryIO) -> Iterator[BinaryIO]:
    if path is None or path == "-":
        yield std
        return
    try:
        f = cast(BinaryIO, open(path, mode))  # a binary mode
    except OSError as exc:
        fail(f"cannot open {path}: {exc.strerror}")
    with f:
        yield f


@click.command("read", context_settings=CONTEXT)
@click.argument("target", metavar=TARGET)
@click.option("-o", "--output", metavar="FILE", help="Write here instead of standard output.")
@click.option(
    "-p", "--dop", type=click.IntRange(min=1), default=DEFAULT_READ_DOP, show_default=True,
    help="The degree of parallelism (blocks downloaded at once).",
)  # fmt: skip
@server_option
@click.pass_context
def buffer_read(
    ctx: click.Context, target: str, output: str | None, dop: int, leaf_server: str | None
) -> None:
    """Read the contents of a buffer (waiting for data while it is being written)."""
    client = open_client(ctx, target, leaf_server, writable=False)

    async def work() -> None:
        async with client:
            with _opened(output, "wb", sys.stdout.buffer) as out:
                await read_buffer(client, out, dop=dop)

    _run(work)


@click.command("write", context_settings=CONTEXT)
@click.argument("target", metavar=TARGET)
@click.option("-i", "--input", "input_path", metavar="FILE", help="Read here, not standard input.")
@click.option(
    "-p", "--dop", type=click.IntRange(min=1), default=DEFAULT_WRITE_DOP, show_default=True,
    help="The degree of parallelism (blocks uploaded at once).",
)  # fmt: skip
@click.option(
    "-b", "--block-size", default=None, metavar="SIZE",
    help="Split the stream into blocks of this size (4Mi, 1M, 65536; default 4Mi).",
)  # fmt: skip
@click.option(
    "-f", "--flush-interval", default="1s", show_default=True, metavar="DURATION",
    help="The longest time accumulated data waits before it is written (unless a block "
    "fills first); ignored when the input is a regular file; 0 disables.",
)  # fmt: skip
@server_option
@click.pass_context
def buffer_write(
    ctx: click.Context,
    target: str,
    input_path: str | None,
    dop: int,
    block_size: str | None,
    flush_interval: str,
    leaf_server: str | None,
) -> None:
    """Write standard input (or -i FILE) to a buffer, then mark it complete."""
    try:
        size = parse_block_size(block_size) if block_size else DEFAULT_BLOCK_SIZE
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--block-size") from None
    try:
        interval = parse_go_duration(flush_interval)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--flush-interval") from None
    client = open_client(ctx, target, leaf_server, writable=True)

    async def work() -> None:
        async with client:
            with _opened(input_path, "rb", sys.stdin.buffer) as src:
                await write_buffer(client, src, dop=dop, block_size=size, flush_interval=interval)

    _run(work)


def register(group: click.Group) -> None:
    """Add `read` and `write` to `group` (the `muster buffer` group)."""
    group.add_command(buffer_read, "read")
    group.add_command(buffer_write, "write")


__all__ = ["DEFAULT_FLUSH_INTERVAL", "buffer_read", "buffer_write", "register"]
