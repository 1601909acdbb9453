"""The fuzz's unary and streaming calls: the methods reflection finds, one
call with its final status, the tally of statuses and the log of errors."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.fuzz.generator import Generator

CALL_TIMEOUT = 5.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


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


def ser(message: Message) -> bytes:
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
    kwargs = {"request_serializer": ser, "response_deserializer": method.response.FromString}
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
