"""What the fuzz test found, each pinned down by a test of its own."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from tests.security.conftest import Secure, connect


async def test_an_agent_stream_cut_by_the_agent_leaves_no_task_behind(secure: Secure) -> None:
    """An agent that goes away (its call cancelled, as when the agent process
    dies) must not leave the control plane's stream handler's pending
    queue read behind: asyncio logs "Task was destroyed but it is pending!"
    at ERROR when such a task is collected."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        ident = await secure.join("n1", await secure.join_token("p"))
        for _ in range(3):
            async with secure.node_channel(ident) as channel:
                agent = await connect(channel, "n1", ["p"])
                await agent.next("registered")
                agent.call.cancel()
            deadline = time.monotonic() + 10
            while secure.plane.orchestrator.ready_agents():
                assert time.monotonic() < deadline, "the control plane kept the stream"
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        left = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "Queue.get"
        ]
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    destroyed = [c["message"] for c in reported if "destroyed" in c.get("message", "")]
    assert not left and not destroyed, (left, destroyed)


async def test_a_codespec_prefix_is_a_plain_prefix_whatever_its_length_or_case(
    secure: Secure,
) -> None:
    """ListCodespecs' prefix is bad input at worst, never a store failure: a
    prefix over SQLite's LIKE pattern limit (50,000 bytes) made the call answer
    UNAVAILABLE ("the control plane's store is unavailable; retry") and log an
    error. And it is case-sensitive, as names are (SQLite's LIKE is not)."""
    async with secure.channel() as channel:
        stub = cgrpc.CodespecServiceStub(channel)
        await stub.CreateCodespec(
            cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="hello-worker", image="i"))
        )

        async def names(prefix: str) -> list[str]:
            answer = await stub.ListCodespecs(cpb.ListCodespecsRequest(prefix=prefix), timeout=5)
            return [c.name for c in answer.codespecs]

        assert await names("hello") == ["hello-worker"]
        assert await names("hello-worker") == ["hello-worker"]
        assert await names("h" * 60_000) == []
        assert await names("hello-worker" + "x" * 60_000) == []
        assert await names("HELLO") == []
        assert await names("hello_") == []
        assert await names("hello%") == []
