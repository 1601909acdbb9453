"""Fixtures the control plane's gRPC tests share: a control plane on a free
port with a 1 s heartbeat (`plane`), and a plaintext channel to it (`ch`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings


async def plane_with(tmp_path: Path, **settings: object) -> ControlPlane:
    """A control plane on a free loopback port, heartbeat 1 s, `settings` over the rest."""
    return await start(
        "127.0.0.1:0",
        tmp_path / "cp.db",
        Settings(heartbeat_interval=timedelta(seconds=1), **settings),  # type: ignore[arg-type]
    )


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    cp = await plane_with(tmp_path)
    try:
        yield cp
    finally:
        await cp.stop(grace=0.2)


@pytest.fixture
async def ch(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        yield channel
