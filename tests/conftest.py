"""Shared fixtures: a real control plane on 127.0.0.1:0, in-process or as a process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.server import ControlPlane, start

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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
    """A control plane running as a real `muster-controlplane` process."""

    proc: subprocess.Popen[str]
    address: str
    db: Path
    extra: list[str] | None = None

    def stop(self) -> None:
        """SIGTERM, then wait; SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_process(
    db: Path, port: int = 0, timeout: float = 15.0, extra: list[str] | None = None
) -> Process:
    """Start `muster-controlplane` and wait until it prints its address.

    Its log goes next to the database, for post-mortems of failed tests.
    """
    db.parent.mkdir(parents=True, exist_ok=True)
    log = open(db.parent / "controlplane.log", "a")
    proc = subprocess.Popen(
        [
            str(BIN / "muster-controlplane"),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(db),
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
    return Process(proc, match.group(1), db, extra)


@pytest.fixture
def cp_process(tmp_path: Path) -> Iterator[Process]:
    """A control plane process, stopped after the test even if it fails."""
    process = start_process(tmp_path / "cp.db")
    try:
        yield process
    finally:
        process.stop()


def run_cli(
    *args: str, server: str | None = None, check: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `muster` command."""
    env = dict(os.environ)
    if server:
        env["MUSTER_SERVER"] = server
    result = subprocess.run(
        [str(BIN / "muster"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"muster {' '.join(args)} failed: {result.stderr}")
    return result
