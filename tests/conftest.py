"""Shared fixtures: a real control plane on 127.0.0.1:0, in-process or as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controlplane.server import ControlPlane, start
from tests.pg_support import pg_server, postgres_url  # noqa: F401  (PostgreSQL fixtures)
from tests.registry_support import registry  # noqa: F401  (the `registry` fixture)
from tests.waiting import until, wait_for  # noqa: F401  (used across the tests)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """An in-process control plane with its own SQLite file."""
    plane = await start("127.0.0.1:0", tmp_path / "cp.db")
    try:
        yield plane
    finally:
        await plane.stop(grace=0.5)


@pytest.fixture
async def channel(control_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    """A real gRPC channel to the in-process control plane."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as ch:
        yield ch


@dataclass
class Process:
    """A control plane running as a real `muster-controlplane` process.

    Secure (the default): TLS and tokens on `address`, mTLS for agents on
    `agent_address`, and the admin credential file `config` in its state
    directory. Insecure: one plaintext address, `config` is None."""

    proc: subprocess.Popen[str]
    address: str
    db: Path
    extra: list[str] | None = None
    agent_address: str = ""
    config: Path | None = None

    @property
    def secure(self) -> bool:
        return self.config is not None

    @property
    def state_dir(self) -> Path:
        return self.db.parent / "state"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this control plane as admin."""
        env = {"MUSTER_SERVER": self.address}
        if self.config is not None:
            env["MUSTER_CONFIG"] = str(self.config)
        return env

    def stop(self) -> None:
        """SIGTERM, then wait; SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def restart(self) -> Process:
        """Stop, then start again on the same addresses, database and state."""
        self.stop()
        agent_port = int(self.agent_address.rsplit(":", 1)[1]) if self.agent_address else 0
        host, port = self.address.rsplit(":", 1)
        return start_process(
            self.db,
            int(port),
            extra=self.extra,
            secure=self.secure,
            agent_port=agent_port,
            host=host,
        )


_DATA_PORTS: dict[Path, int] = {}
"""The data plane's port for each test database (see start_process)."""


def start_process(
    db: Path,
    port: int = 0,
    timeout: float = 15.0,
    extra: list[str] | None = None,
    secure: bool = True,
    agent_port: int = 0,
    host: str = "127.0.0.1",
) -> Process:
    """Start `muster-controlplane` and wait until it prints its address.

    Its log goes next to the database, for post-mortems of failed tests.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    log = open(db.parent / "controlplane.log", "a")
    if not any(flag == "--data-listen" for flag in extra or []):
        # The data plane's default port is fixed (50053): a control plane of
        # another test (or anything else on the machine) may hold it. Each
        # database gets a port of its own, kept across restarts, so buffer
        # URLs signed before a restart still point at it.
        port_of_db = _DATA_PORTS.setdefault(db, free_port())
        extra = [*(extra or []), "--data-listen", f"{host}:{port_of_db}"]
    security = (
        ["--state-dir", str(db.parent / "state"), "--agent-listen", f"{host}:{agent_port}"]
        if secure
        else ["--insecure"]
    )
    proc = subprocess.Popen(
        [
            str(BIN / "muster-controlplane"),
            "--listen",
            f"{host}:{port}",
            "--db",
            str(db),
            *security,
            *(extra or []),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server prints (or exits)
    match = re.search(r"listening on (\S+)", line)
    if not match or time.monotonic() > deadline:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"control plane did not start: {line!r}")
    log.close()
    agents = re.search(r"agents on (\S+)", line)
    config = re.search(r"admin credentials in (\S+?)\)", line)
    return Process(
        proc,
        match.group(1),
        db,
        extra,
        agents.group(1) if agents else "",
        Path(config.group(1)) if config else None,
    )


@pytest.fixture
def cp_process(tmp_path: Path) -> Iterator[Process]:
    """A control plane process, stopped after the test even if it fails."""
    process = start_process(tmp_path / "cp.db")
    try:
        yield process
    finally:
        process.stop()


def secure_test_channel(cp: Process) -> grpc.Channel:
    """A blocking gRPC channel to a control plane process, as its admin."""
    if cp.config is None:
        return grpc.insecure_channel(cp.address)
    config = json.loads(cp.config.read_text())
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(config["caCert"].encode()),
        grpc.access_token_call_credentials(config["token"]),
    )
    return grpc.secure_channel(cp.address, creds)


def isolated_env(tmp: Path | None = None) -> dict[str, str]:
    """The environment without any credential file of the machine's own user
    (say, one left by the demo): a test says which control plane it means."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    nowhere = str(tmp or Path("/nonexistent/muster-tests"))
    env.update(XDG_CONFIG_HOME=nowhere, MUSTER_STATE_DIR=nowhere)
    return env


def run_cli(
    *args: str,
    server: str | Process | None = None,
    check: bool = False,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `muster` command against `server` (a Process: as its admin)."""
    env = {**isolated_env(), **(env or {})}
    if isinstance(server, Process):
        env.update(server.env())
    elif server:
        env["MUSTER_SERVER"] = server
    result = subprocess.run(
        [str(BIN / "muster"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"muster {' '.join(args)} failed: {result.stderr}")
    return result
