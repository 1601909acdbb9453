"""Fuzzing every gRPC method of a secure control plane with random, well-formed requests.

The services and their request types come from the server itself (reflection);
requests are built from those descriptors (`tests/fuzz/generator.py`). Besides
the unary and server-streaming calls, node agents' Connect streams are fuzzed:
nodes join with join tokens, then open streams with their certificates and
send random ConnectRequest messages (a Register first, mostly valid, sometimes
not), while runs are placed on them and image requests wait for their answers.

What must hold: no call ends UNKNOWN or INTERNAL, the control plane logs no
unexpected error (an exception inside a stream reader or the reconcile loop
does not reach the client as a status), and afterwards it still serves:
health SERVING, and a normal codespec, run and GetRun work.

Seeded: MUSTER_FUZZ_SEED=N replays a run's requests (the seed is printed; how
concurrent calls interleave still varies); MUSTER_FUZZ_CALLS sets the number
of calls besides the agent streams.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.core.auth import NODE, requirement
from muster.v1 import agent_pb2 as apb
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.fuzz.generator import Generator, Known
from tests.security.conftest import NodeIdentity, Secure

SEED = int(os.environ.get("MUSTER_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CALLS = int(os.environ.get("MUSTER_FUZZ_CALLS") or 10_000)
CONCURRENCY = 24
CALL_TIMEOUT = 5.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
POOL = "fuzz"
STREAM_NODES = 4


@dataclass(frozen=True)
class Method:
    """One RPC, as reflection describes it."""

    path: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


@dataclass
class Tally:
    """Status codes per method, and the forbidden ones with their details."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    per_method: dict[str, collections.Counter[str]] = field(default_factory=dict)
    forbidden: list[str] = field(default_factory=list)
    messages: int = 0

    def error(self, method: str, exc: grpc.aio.AioRpcError) -> None:
        """Tally a failed call."""
        self.add(method, *outcome(exc))

    def add(self, method: str, code: grpc.StatusCode | str, details: str = "") -> None:
        name = code if isinstance(code, str) else code.name
        self.codes[name] += 1
        self.per_method.setdefault(method, collections.Counter())[name] += 1
        if isinstance(code, grpc.StatusCode) and code in FORBIDDEN:
            self.forbidden.append(f"{method}: {name}: {details[:300]}")


CLIENT_WRITE_RACE = "INTERNAL from the client's own late write (grpc#36066, not the server's)"


def outcome(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode | str, str]:
    """The status of a failed call. The asyncio client has a known bug
    (grpc/grpc#36066): when the server ends a client-streaming call (say, it
    refuses a Register) while the client is still writing, the client's failed
    write replaces the server's status with INTERNAL "Internal error from
    Core". Those are told apart by their debug string; what the server really
    did there is checked through its log (an exception in a servicer is logged
    at ERROR)."""
    debug = exc.debug_error_string() or ""
    if (
        exc.code() == grpc.StatusCode.INTERNAL
        and 'Failed "execute_batch"' in debug
        and "SendMessageOperation" in debug
    ):
        return CLIENT_WRITE_RACE, debug
    return exc.code(), exc.details() or ""


class ErrorLog(logging.Handler):
    """Collects ERROR records (and worse): the control plane logs refused input at
    INFO or WARNING, so anything at ERROR is a finding. Except one kind: gRPC
    logs at ERROR ("ExecuteBatchError raised in core by servicer method") when
    a servicer answers a call its client has already left (cancelled, past its
    deadline, or refused an answer over its 4 MiB limit); those are counted."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []
        self.late_answers = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("ExecuteBatchError raised in core by servicer method"):
            self.late_answers += 1
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        self.records.append(f"{record.name}: {text[:500]}")


# -- reflection ------------------------------------------------------------------------------


async def discover(channel: grpc.aio.Channel) -> list[Method]:
    """Every method of every service the server lists, with message classes built
    from the file descriptors it serves (not from the generated modules)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(**request: str) -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]))
        async for response in call:
            return response
        raise AssertionError(f"reflection gave no answer to {request}")

    listed = await ask(list_services="")
    services = [s.name for s in listed.list_services_response.service]
    files: dict[str, bytes] = {}

    async def load(**request: str) -> None:
        answer = await ask(**request)
        assert answer.HasField("file_descriptor_response"), (request, answer)
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            files[descriptor_pb2.FileDescriptorProto.FromString(raw).name] = raw

    for service in services:
        await load(file_containing_symbol=service)
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    async def add(name: str) -> None:
        if name in added:
            return
        if name not in files:
            await load(file_by_filename=name)
        proto = descriptor_pb2.FileDescriptorProto.FromString(files[name])
        for dep in proto.dependency:
            await add(dep)
        pool.AddSerializedFile(files[name])
        added.add(name)

    for name in list(files):
        await add(name)
    methods = []
    for service in services:
        for m in pool.FindServiceByName(service).methods:
            methods.append(
                Method(
                    f"/{service}/{m.name}",
                    message_factory.GetMessageClass(m.input_type),
                    message_factory.GetMessageClass(m.output_type),
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return methods


# -- calls -----------------------------------------------------------------------------------


def _ser(message: Message) -> bytes:
    return message.SerializeToString()


async def call_once(
    channel: grpc.aio.Channel,
    method: Method,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
    rng: random.Random,
    gen: Generator,
) -> tuple[grpc.StatusCode | str, str]:
    """One call; its final status (a client-side cancel of a long stream counts as OK)."""
    kwargs = {"request_serializer": _ser, "response_deserializer": method.response.FromString}
    try:
        if not method.client_streaming and not method.server_streaming:
            await channel.unary_unary(method.path, **kwargs)(
                request, metadata=metadata, timeout=CALL_TIMEOUT
            )
            return grpc.StatusCode.OK, ""
        if method.client_streaming:
            requests = [request] + [gen.message(method.request) for _ in range(rng.randint(0, 3))]
            call = channel.stream_stream(method.path, **kwargs)(
                iter(requests), metadata=metadata, timeout=CALL_TIMEOUT
            )
        else:
            call = channel.unary_stream(method.path, **kwargs)(
                request, metadata=metadata, timeout=CALL_TIMEOUT
            )
        # Streams that would go on (a watch, a follow, health Watch): read a little, then leave.
        for _ in range(rng.randint(1, 5)):
            try:
                item = await asyncio.wait_for(call.read(), 0.5)
            except TimeoutError:
                call.cancel()
                return "OK (left open, cancelled by the client)", ""
            if item is grpc.aio.EOF:
                break
        else:
            call.cancel()
            return "OK (left open, cancelled by the client)", ""
        return await call.code(), await call.details() or ""
    except grpc.aio.AioRpcError as exc:
        return outcome(exc)


# -- node agents -----------------------------------------------------------------------------


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
            request_serializer=_ser,
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


async def steady_agent(
    secure: Secure, ident: NodeIdentity, nodes: Nodes, tally: Tally, stop: asyncio.Event
) -> None:
    """A node that stays connected and answers image requests (with random contents),
    so that PullImage and ListImages get answers instead of waiting out their deadlines."""
    rng = random.Random(SEED + 1)
    gen = Generator(rng, Known(), huge=0)
    while not stop.is_set():
        outbox: asyncio.Queue[apb.ConnectRequest | None] = asyncio.Queue()

        async def requests(outbox=outbox) -> AsyncIterator[apb.ConnectRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        async with secure.node_channel(ident) as channel:
            call = channel.stream_stream(
                "/muster.v1.AgentService/Connect",
                request_serializer=_ser,
                response_deserializer=apb.ConnectResponse.FromString,
            )(requests())
            outbox.put_nowait(
                apb.ConnectRequest(
                    register=apb.Register(
                        node_name=ident.name,
                        pools=[POOL],
                        allocatable=npb.Capacity(cpu_millis=64_000, memory_bytes=2**40),
                        instance_id="steady",
                    )
                )
            )

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


# -- the test --------------------------------------------------------------------------------


async def join(secure: Secure, name: str) -> NodeIdentity:
    return await secure.join(name, await secure.join_token(POOL))


async def test_fuzz_every_method(secure: Secure) -> None:
    print(f"\nfuzz seed {SEED} (MUSTER_FUZZ_SEED={SEED} replays its requests), {CALLS} calls")
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    started = time.monotonic()
    rng = random.Random(SEED)
    tag = f"{rng.randrange(16**6):06x}"
    known = Known()
    tally = Tally()
    tokens = {
        "admin": secure.admin_token,
        "user": await secure.token(f"fuzz-user-{tag}", "user"),
        "reader": await secure.token(f"fuzz-reader-{tag}", "reader"),
    }
    steady = await join(secure, f"fuzz-steady-{tag}")
    idents = [await join(secure, f"fuzz-node-{tag}-{i}") for i in range(STREAM_NODES)]
    nodes = Nodes([steady, *idents])
    known.add(POOL, "cpu", "job", "worker", *(i.name for i in nodes.identities))
    # A node that RemoveNode may really remove: requests naming the nodes the
    # fuzz needs are aimed at it instead (a removed node's certificate is dead).
    victim = await join(secure, f"fuzz-victim-{tag}")
    protected = {i.name for i in nodes.identities}
    known.add(victim.name, "registry.example:5000")

    api = secure.channel(token="")
    node_channels = {i.name: secure.node_channel(i) for i in nodes.identities}
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    try:
        methods = await discover(api)
        paths = {m.path for m in methods}
        assert "/muster.v1.AgentService/Connect" in paths and len(methods) >= 30, paths
        # Something real to find: codespecs, runs placed on the fuzz nodes.
        codespecs = cgrpc.CodespecServiceStub(api)
        runs = rgrpc.RunServiceStub(api)
        admin = (("authorization", f"Bearer {secure.admin_token}"),)
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(name="fuzz-job", image="localhost/x:1", command=["true"])
            ),
            metadata=admin,
        )
        await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(
                    name="fuzz-worker",
                    kind=cpb.CODESPEC_KIND_WORKER,
                    image="localhost/x:1",
                    endpoints={"http": 8080},
                )
            ),
            metadata=admin,
        )
        known.add("fuzz-job", "fuzz-worker", "fuzz-job/versions/1")
        background.append(asyncio.create_task(steady_agent(secure, steady, nodes, tally, stop)))
        node_service = ngrpc.NodeServiceStub(api)
        deadline = time.monotonic() + 10
        while not any(
            n.name == steady.name and n.status == npb.NODE_STATUS_READY
            for n in (await node_service.ListNodes(npb.ListNodesRequest(), metadata=admin)).nodes
        ):
            assert time.monotonic() < deadline, "the steady fuzz agent did not register"
            await asyncio.sleep(0.05)
        for i in range(12):
            run = rpb.Run(
                job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="fuzz-job"), node_pool=POOL)
            )
            if i % 2:
                run.worker.CopyFrom(
                    rpb.RunCodeTarget(
                        codespec=rpb.CodespecRef(named="fuzz-worker"), node_pool=POOL, replicas=2
                    )
                )
            created = await runs.CreateRun(rpb.CreateRunRequest(run=run), metadata=admin)
            known.add(created.run.id)

        async def stream_fuzzer(ident: NodeIdentity, seed: int) -> None:
            srng = random.Random(seed)
            sgen = Generator(srng, known, huge=0.001)
            while not stop.is_set():
                await agent_stream(
                    secure,
                    ident,
                    nodes,
                    tally,
                    srng,
                    sgen,
                    srng.randint(0, 80),
                    srng.choice(["a", "a", "a", "b"]),
                    linger=srng.choice([0, 0, 0, 1.0]),
                )

        for i, ident in enumerate(idents):
            background.append(asyncio.create_task(stream_fuzzer(ident, SEED + 100 + i)))

        remaining = iter(range(CALLS))

        async def worker(index: int) -> None:
            wrng = random.Random(SEED * 1000 + index)
            wgen = Generator(wrng, known, avoid=lambda s: s == "admin")
            for _ in remaining:
                method = wrng.choice(methods)
                request = wgen.message(method.request)
                if method.path.endswith("/RemoveNode") and request.name in protected:  # type: ignore[attr-defined]
                    request.name = victim.name  # type: ignore[attr-defined]
                if requirement(method.path) == NODE:
                    ident = wrng.choice(nodes.identities)
                    channel, metadata = node_channels[ident.name], ()
                else:
                    who = wrng.choices(
                        ["admin", "user", "reader", "none", "garbage"], [80, 6, 6, 4, 4]
                    )[0]
                    channel = api
                    if who == "none":
                        metadata = ()
                    elif who == "garbage":
                        junk = "".join(wrng.choice("abcXYZ_-~+/=0") for _ in range(40))
                        metadata = (("authorization", f"Bearer {junk}"),)
                    else:
                        metadata = (("authorization", f"Bearer {tokens[who]}"),)
                code, details = await call_once(channel, method, request, metadata, wrng, wgen)
                tally.add(method.path, code, details)

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*background), 30)
        elapsed = time.monotonic() - started

        unary_calls = sum(tally.codes.values()) - sum(nodes.streams.values())
        print(
            f"{unary_calls} calls over {len(methods)} methods, "
            f"{sum(nodes.streams.values())} agent streams with {tally.messages} messages, "
            f"{elapsed:.1f} s; {errors.late_answers} answers to calls the client had left"
        )
        for code, count in tally.codes.most_common():
            print(f"  {code:<45} {count}")
        print("  per method:")
        for path in sorted(tally.per_method):
            summary = ", ".join(f"{c} {n}" for c, n in tally.per_method[path].most_common())
            print(f"    {path}: {summary}")
        assert not tally.forbidden, "\n".join(tally.forbidden[:30])
        assert unary_calls >= CALLS
        assert set(tally.per_method) >= paths, paths - set(tally.per_method)
        assert not errors.records, "\n".join(errors.records[:30])

        # Still serving, normally.
        health = health_pb2_grpc.HealthStub(api)
        for service in ["", "muster.v1.RunService", "muster.v1.AgentService"]:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        name = f"after-fuzz-{tag}"
        made = await codespecs.CreateCodespec(
            cpb.CreateCodespecRequest(
                codespec=cpb.Codespec(name=name, image="localhost/muster-busybox:latest")
            ),
            metadata=admin,
        )
        assert made.created and made.codespec.version == 1
        created = await runs.CreateRun(
            rpb.CreateRunRequest(
                run=rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named=name)))
            ),
            metadata=admin,
        )
        got = await runs.GetRun(rpb.GetRunRequest(run_id=created.run.id), metadata=admin)
        assert got.run.id == created.run.id
        assert got.run.status == rpb.RUN_STATUS_PENDING
        assert got.run.job.resolved_codespec.name == name
    finally:
        stop.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for channel in node_channels.values():
            await channel.close()
        await api.close()
        logging.getLogger().removeHandler(errors)
