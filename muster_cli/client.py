"""gRPC connection and error reporting shared by every CLI command."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

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
