"""Fuzzed node agents: Connect streams that register (mostly validly), send
random messages aimed at the replicas placed on them and answer image
requests, and one steady agent that stays connected."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from muster.v1 import agent_pb2 as apb
from muster.v1 import node_pb2 as npb
from muster.v1 import run_pb2 as rpb
from tests.fuzz.calls import Tally, outcome, ser
from tests.fuzz.generator import Generator, Known
from tests.security.conftest import NodeIdentity, Secure

POOL = "fuzz"


@dataclass
class Nodes:
    """Joined fuzz nodes and what the control plane told them."""

    identities: list[NodeIdentity]
    starts: list[apb.StartContainer] = field(default_factory=list)
    streams: collections.Counter[str] = field(default_factory=collections.Counter)


def status_message(gen: Generator, rng: random.Random, nodes: Nodes) -> apb.ContainerStatus:
    """A container status aimed at a replica the control plane really placed
    (often with its real generation), with random state, exit code and text."""
    status = gen.message(apb.ContainerStatus)
    assert isinstance(status, apb.ContainerStatus)
    if nodes.starts and rng.random() < 0.8:
        start = rng.choice(nodes.starts)
        status.run_id, status.role, status.replica = start.run_id, start.role, start.replica
        status.container_name = start.container_name
        if rng.random() < 0.7:
            status.generation = start.generation
        if rng.random() < 0.9:  # this cluster's (or no cluster id): otherwise ignored
            status.cluster_id = rng.choice([start.cluster_id, ""])
        status.state = rng.choice(list(rpb.ContainerState.values()))
        if rng.random() < 0.2:
            status.pull_bytes_done = status.pull_bytes_total = 0
    return status


def agent_message(gen: Generator, rng: random.Random, nodes: Nodes) -> apb.ConnectRequest:
    """A random ConnectRequest, half of them aimed at placed replicas."""
    roll = rng.random()
    if roll < 0.25:
        return apb.ConnectRequest(container_status=status_message(gen, rng, nodes))
    if roll < 0.40:
        batch = gen.message(apb.LogBatch)
        assert isinstance(batch, apb.LogBatch)
        for entry in batch.entries:
            if nodes.starts and rng.random() < 0.8:
                start = rng.choice(nodes.starts)
                entry.run_id, entry.role, entry.replica = start.run_id, start.role, start.replica
        return apb.ConnectRequest(log_batch=batch)
    if roll < 0.50:
        return apb.ConnectRequest(heartbeat=apb.Heartbeat())
    message = gen.message(apb.ConnectRequest)
    assert isinstance(message, apb.ConnectRequest)
    return message


def register_message(
    gen: Generator, rng: random.Random, nodes: Nodes, ident: NodeIdentity, instance: str
) -> apb.ConnectRequest:
    """Mostly a Register this node may send (its name, some of its pools, random
    containers, labels and capacity); sometimes anything at all."""
    if rng.random() < 0.15:
        message = gen.message(apb.ConnectRequest)
        assert isinstance(message, apb.ConnectRequest)
        return message
    register = gen.message(apb.Register)
    assert isinstance(register, apb.Register)
    register.node_name = ident.name
    del register.pools[:]
    register.pools.extend(rng.sample(list(ident.reply.pools), rng.randint(0, 1)))
    register.instance_id = instance
    if rng.random() < 0.7:  # room for the runs placed in the fuzz pool
        register.allocatable.CopyFrom(npb.Capacity(cpu_millis=64_000, memory_bytes=2**40))
    del register.containers[:]
    register.containers.extend(status_message(gen, rng, nodes) for _ in range(rng.randint(0, 4)))
    return apb.ConnectRequest(register=register)


def answer_of(
    request: apb.ConnectResponse, gen: Generator, rng: random.Random
) -> apb.ConnectRequest | None:
    """A random answer to PullImage/ListImages that carries its request id (nearly always)."""
    kind = request.WhichOneof("message")
    if kind == "pull_image":
        pulled = gen.message(apb.ImagePulled)
        assert isinstance(pulled, apb.ImagePulled)
        if rng.random() < 0.97:
            pulled.request_id = request.pull_image.request_id
        return apb.ConnectRequest(image_pulled=pulled)
    if kind == "list_images":
        listed = gen.message(apb.ImagesListed)
        assert isinstance(listed, apb.ImagesListed)
        if rng.random() < 0.97:
            listed.request_id = request.list_images.request_id
        return apb.ConnectRequest(images_listed=listed)
    return None


async def agent_stream(
    secure: Secure,
    ident: NodeIdentity,
    nodes: Nodes,
    tally: Tally,
    rng: random.Random,
    gen: Generator,
    messages: int,
    instance: str,
    linger: float = 0.0,
) -> None:
    """One Connect stream: Register (or not), `messages` random messages, answers
    to image requests, then the end of our side; its status goes in the tally."""
    outbox: asyncio.Queue[apb.ConnectRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[apb.ConnectRequest]:
        while (message := await outbox.get()) is not None:
            tally.messages += 1
            yield message

    async with secure.node_channel(ident) as channel:
        call = channel.stream_stream(
            "/muster.v1.AgentService/Connect",
            request_serializer=ser,
            response_deserializer=apb.ConnectResponse.FromString,
        )(requests())

        async def read() -> None:
            async for response in call:
                if response.HasField("start_container"):
                    nodes.starts.append(response.start_container)
                    nodes.starts[:] = nodes.starts[-200:]
                    gen.known.add(response.start_container.generation)
                answer = answer_of(response, gen, rng)
                if answer is not None:
                    outbox.put_nowait(answer)

        reader = asyncio.create_task(read())
        outbox.put_nowait(register_message(gen, rng, nodes, ident, instance))
        for _ in range(messages):
            outbox.put_nowait(agent_message(gen, rng, nodes))
            await asyncio.sleep(rng.choice([0, 0, 0, 0, 0.01]))
        if linger:
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline and not reader.done():
                outbox.put_nowait(apb.ConnectRequest(heartbeat=apb.Heartbeat()))
                await asyncio.sleep(0.5)
        outbox.put_nowait(None)
        try:
            await asyncio.wait_for(reader, 10)
            code, details = await call.code(), await call.details() or ""
        except grpc.aio.AioRpcError as exc:
            code, details = outcome(exc)
        except TimeoutError:
            call.cancel()
            code, details = "stream did not end 10 s after the agent closed its side", ""
        tally.add("/muster.v1.AgentService/Connect", code, details)
        nodes.streams[code if isinstance(code, str) else code.name] += 1


def steady_register(ident: NodeIdentity) -> apb.ConnectRequest:
    """The steady agent's Register: the fuzz pool, room for every run placed there."""
    return apb.ConnectRequest(
        register=apb.Register(
            node_name=ident.name,
            pools=[POOL],
            allocatable=npb.Capacity(cpu_millis=64_000, memory_bytes=2**40),
            instance_id="steady",
        )
    )


async def steady_agent(
    secure: Secure,
    ident: NodeIdentity,
    nodes: Nodes,
    tally: Tally,
    stop: asyncio.Event,
    seed: int,
) -> None:
    """A node that stays connected and answers image requests (with random contents),
    so that PullImage and ListImages get answers instead of waiting out their deadlines."""
    rng = random.Random(seed)
    gen = Generator(rng, Known(), huge=0)
    while not stop.is_set():
        outbox: asyncio.Queue[apb.ConnectRequest | None] = asyncio.Queue()

        async def requests(outbox=outbox) -> AsyncIterator[apb.ConnectRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        async with secure.node_channel(ident) as channel:
            call = channel.stream_stream(
                "/muster.v1.AgentService/Connect",
                request_serializer=ser,
                response_deserializer=apb.ConnectResponse.FromString,
            )(requests())
            outbox.put_nowait(steady_register(ident))

            async def beat(outbox=outbox) -> None:
                while True:
                    await asyncio.sleep(0.5)
                    outbox.put_nowait(apb.ConnectRequest(heartbeat=apb.Heartbeat()))

            async def serve(call=call, outbox=outbox) -> None:
                async for response in call:
                    if response.HasField("start_container"):
                        nodes.starts.append(response.start_container)
                    answer = answer_of(response, gen, rng)
                    if answer is not None:
                        outbox.put_nowait(answer)

            beater = asyncio.create_task(beat())
            server = asyncio.create_task(serve())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if server.done() and isinstance(server.exception(), grpc.aio.AioRpcError):
                    exc = server.exception()
                    assert isinstance(exc, grpc.aio.AioRpcError)
                    tally.error("/muster.v1.AgentService/Connect", exc)
            finally:
                for task in (beater, server, stopper):
                    task.cancel()
                outbox.put_nowait(None)
                call.cancel()
