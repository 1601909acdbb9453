"""A real data plane on loopback (port 0) for each test, and helpers to reach it."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest

from controlplane.dataplane.server import DataPlane
from muster.common.buffers.client import ContainerClient
from muster.common.buffers.format import new_buffer_id

KEY = b"k" * 32


def in_an_hour() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)


@pytest.fixture
async def plane(tmp_path) -> AsyncIterator[DataPlane]:
    dp = DataPlane(tmp_path / "dataplane", KEY)
    await dp.start("127.0.0.1", 0)
    try:
        yield dp
    finally:
        await dp.stop()


@pytest.fixture
async def buffer_id(plane: DataPlane) -> str:
    bid = new_buffer_id()
    await plane.create(bid)
    return bid


@pytest.fixture
async def writer_client(plane: DataPlane, buffer_id: str) -> AsyncIterator[ContainerClient]:
    client = ContainerClient(plane.access_url(buffer_id, writable=True, expires_at=in_an_hour()))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def reader_client(plane: DataPlane, buffer_id: str) -> AsyncIterator[ContainerClient]:
    client = ContainerClient(plane.access_url(buffer_id, writable=False, expires_at=in_an_hour()))
    try:
        yield client
    finally:
        await client.close()
