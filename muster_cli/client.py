"""gRPC connection, credentials and error reporting shared by every CLI command.

Credentials come from one client credential file (see
`muster.common.clientconfig`), the first that applies of: `--config`,
`$MUSTER_CONFIG`, `~/.config/muster/config.json` (written by `muster
login`), and the administrator's file that a control plane on this machine
wrote into its state directory. `--server`/`$MUSTER_SERVER` override the
file's address and `$MUSTER_TOKEN` its token. With no file at all, the CLI
talks plaintext, which only a control plane started with `--insecure` answers.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from muster.common import clientconfig
from muster.common.clientconfig import ClientConfig, ConfigError
from muster.common.net import is_loopback

DEFAULT_SERVER = "127.0.0.1:50051"
_config_flag: str | None = None
T = TypeVar("T")
RETRY_SECONDS = 30.0
"""How long a create keeps retrying while the control plane is unavailable."""
CHANNEL_OPTIONS = [
    # Reconnect soon after the control plane comes back (gRPC's default backoff
    # grows to two minutes), so retries find it within seconds.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def set_config_flag(path: str | None) -> None:
    """Remember `--config` for this invocation."""
    global _config_flag
    _config_flag = path


def user_config_path() -> Path:
    """Where `muster login` writes by default."""
    return clientconfig.config_home() / "muster" / "config.json"


def config_path() -> Path | None:
    """The credential file this invocation uses, if any."""
    explicit = _config_flag or os.environ.get("MUSTER_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (
        user_config_path(),
        Path(os.environ.get("MUSTER_STATE_DIR") or clientconfig.default_state_dir())
        / clientconfig.ADMIN_FILE,
    ):
        if candidate.is_file() and os.access(candidate, os.R_OK):
            return candidate
    return None


def client_config() -> ClientConfig | None:
    """The parsed credential file, or None; a broken file is a one-line error."""
    path = config_path()
    if path is None:
        return None
    try:
        return clientconfig.load(path)
    except ConfigError as exc:
        fail(str(exc))


def server_address(flag: str | None) -> str:
    """--server, else MUSTER_SERVER, else the credential file's, else the local default."""
    if flag or os.environ.get("MUSTER_SERVER"):
        return flag or os.environ["MUSTER_SERVER"]
    config = client_config()
    return config.server if config else DEFAULT_SERVER


def open_channel(address: str, config: ClientConfig | None = None) -> grpc.Channel:
    """A channel to `address` with the credentials in force (TLS and the
    bearer token, or plaintext with no credential file or `insecure: true`).
    `address` may list several control planes, comma-separated: the channel
    finds their leader and follows it (muster_cli/leader.py)."""
    from muster.common.leaders import split_addresses
    from muster_cli.leader import LeaderChannel

    config = config or client_config()
    return LeaderChannel(split_addresses(address) or [address], lambda one: _open_one(one, config))


def _open_one(address: str, config: ClientConfig | None) -> grpc.Channel:
    """A plain gRPC channel to one control plane."""
    token = os.environ.get("MUSTER_TOKEN") or (config.token if config else "")
    if config is None or config.insecure:
        if token and not is_loopback(address):
            fail(f"refusing to send a token in plaintext to {address}; give a caCert")
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(config.ca_pem.encode())
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)


def _unreachable(address: str, detail: str) -> str:
    hint = "is it running? Set --server or MUSTER_SERVER"
    if config_path() is None:
        hint += "; no credentials were found: run `muster login` or set MUSTER_CONFIG"
    return f"cannot reach the muster control plane at {address} ({detail}); {hint}"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line on stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def channel(address: str) -> Iterator[grpc.Channel]:
    """A channel whose RPC errors become one clear line and exit code 1."""
    ch = open_channel(address)
    try:
        yield ch
    except grpc.RpcError as err:
        code = err.code()
        detail = err.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE:
            fail(_unreachable(address, detail))
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            fail(f"the control plane at {address} did not answer in time")
        fail(detail)
    finally:
        ch.close()


def with_retries(call: Callable[[], T], budget: float = RETRY_SECONDS) -> T:
    """`call()`, again after a pause (jittered, growing from 0.25 s to 3 s)
    while it fails UNAVAILABLE or DEADLINE_EXCEEDED, for up to `budget`
    seconds; then its last error stands. Only for calls that are safe to
    repeat: creates with a request id, or idempotent by content."""
    give_up = time.monotonic() + budget
    pause = 0.25
    while True:
        try:
            return call()
        except grpc.RpcError as err:
            code = err.code()
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retryable or time.monotonic() + pause > give_up:
                raise
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(pause * 2, 3.0)


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
        code = err.code()
        if code != grpc.StatusCode.UNAVAILABLE:
            fail(err.details() or code.name)
        if not self._connected_once:
            fail(_unreachable(self.server, err.details() or code.name))
        self._failing_since = self._failing_since or time.monotonic()
        if time.monotonic() - self._failing_since > self.give_up:
            fail(f"lost the control plane at {self.server} while {self.what}")
        time.sleep(0.5)
