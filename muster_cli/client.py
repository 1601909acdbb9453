"""gRPC connection and error reporting shared by every CLI command."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc

DEFAULT_SERVER = "127.0.0.1:50051"


def server_address(flag: str | None) -> str:
    """--server, else MUSTER_SERVER, else the local default."""
    return flag or os.environ.get("MUSTER_SERVER") or DEFAULT_SERVER


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line on stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def channel(address: str) -> Iterator[grpc.Channel]:
    """A channel whose RPC errors become one clear line and exit code 1."""
    ch = grpc.insecure_channel(address)
    try:
        yield ch
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        detail = err.details() or code.name  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            fail(
                f"cannot reach the muster control plane at {address} ({detail}); "
                "is it running? Set --server or MUSTER_SERVER"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            fail(f"the control plane at {address} did not answer in time")
        fail(detail)
    finally:
        ch.close()


def collect_pages(call: Callable[..., Any], field: str, limit: int, **request: Any) -> list[Any]:
    """Follow next_page_token until `limit` items (or the end) are collected.

    `call(page_size=..., page_token=..., **request)` returns a list response
    whose repeated `field` holds the items.
    """
    items: list[Any] = []
    token = ""
    while len(items) < limit:
        reply = call(page_size=min(limit - len(items), 1000), page_token=token, **request)
        items.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            break
    return items


class Reconnect:
    """The retry policy of long-lived streams (watch, logs -f): UNAVAILABLE is
    retried until `give_up` seconds pass without progress; anything else is a
    one-line error."""

    def __init__(self, server: str, what: str, give_up: float = 60.0) -> None:
        self.server, self.what, self.give_up = server, what, give_up
        self._failing_since: float | None = None
        self._connected_once = False

    def progress(self) -> None:
        """The stream delivered something: the give-up clock restarts."""
        self._failing_since = None
        self._connected_once = True

    def failed(self, err: grpc.RpcError) -> None:
        """Return to retry after a pause, or exit with one clear line."""
        code = err.code()  # type: ignore[attr-defined]
        if code != grpc.StatusCode.UNAVAILABLE:
            fail(err.details() or code.name)  # type: ignore[attr-defined]
        if not self._connected_once:
            fail(
                f"cannot reach the muster control plane at {self.server}; is it running? "
                "Set --server or MUSTER_SERVER"
            )
        self._failing_since = self._failing_since or time.monotonic()
        if time.monotonic() - self._failing_since > self.give_up:
            fail(f"lost the control plane at {self.server} while {self.what}")
        time.sleep(0.5)
