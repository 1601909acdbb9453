"""An in-process fake control plane: a real grpc.aio AgentService on 127.0.0.1.

It records every message each agent stream sends, answers Register with
Registered, and lets a test push StartContainer/TeardownRun/PullImage/ListImages
(or any ConnectResponse, ``send``) down the current stream. Tests wait on
conditions over the recorded messages (never on sleeps): every received
message notifies waiters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from muster.v1 import agent_pb2, agent_pb2_grpc, run_pb2

T = TypeVar("T")
SERVER_OPTIONS = (
    # Like the control plane's server: accept the agent's keepalive pings.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
)
_REJECT = object()


@dataclass
class Stream:
    """One Connect stream as the fake control plane saw it."""

    received: list[agent_pb2.ConnectRequest] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """Loop time at which each message of ``received`` arrived."""
    outbox: asyncio.Queue[agent_pb2.ConnectResponse | object | None] = field(
        default_factory=asyncio.Queue
    )
    closed: bool = False
    unacked: list[int] = field(default_factory=list)
    """Numbered log batches received and not acknowledged yet."""

    @property
    def register(self) -> agent_pb2.Register | None:
        """The stream's Register, if received."""
        for msg in self.received:
            if msg.WhichOneof("message") == "register":
                return msg.register
        return None

    @property
    def statuses(self) -> list[agent_pb2.ContainerStatus]:
        """ContainerStatus messages in arrival order."""
        return [m.container_status for m in self.received if m.HasField("container_status")]

    @property
    def heartbeats(self) -> list[agent_pb2.Heartbeat]:
        """Heartbeat messages in arrival order."""
        return [m.heartbeat for m in self.received if m.HasField("heartbeat")]

    @property
    def heartbeat_arrivals(self) -> list[float]:
        """Loop times at which heartbeats arrived."""
        return [
            t for m, t in zip(self.received, self.arrivals, strict=True) if m.HasField("heartbeat")
        ]

    @property
    def images_pulled(self) -> list[agent_pb2.ImagePulled]:
        """ImagePulled answers in arrival order."""
        return [m.image_pulled for m in self.received if m.HasField("image_pulled")]

    @property
    def images_listed(self) -> list[agent_pb2.ImagesListed]:
        """ImagesListed answers in arrival order."""
        return [m.images_listed for m in self.received if m.HasField("images_listed")]

    @property
    def log_batches(self) -> list[agent_pb2.LogBatch]:
        """LogBatch messages in arrival order."""
        return [m.log_batch for m in self.received if m.HasField("log_batch")]

    def log_entries(self, container: str | None = None) -> list[agent_pb2.LogEntry]:
        """Every LogEntry in arrival order (of one container: ``muster-run-R-role-i``)."""
        entries = [e for m in self.received if m.HasField("log_batch") for e in m.log_batch.entries]
        if container is None:
            return entries
        return [e for e in entries if container_of(e) == container]

    def log_count(self, container: str | None = None) -> int:
        """Number of LogEntry messages received (cheap enough to poll per message)."""
        if container is None:
            return sum(len(m.log_batch.entries) for m in self.received if m.HasField("log_batch"))
        return len(self.log_entries(container))


def container_of(entry: agent_pb2.LogEntry) -> str:
    """The deterministic container name a log entry belongs to."""
    role = "job" if entry.role == run_pb2.REPLICA_ROLE_JOB else "worker"
    return f"muster-run-{entry.run_id}-{role}-{entry.replica}"


class FakeControlPlane(agent_pb2_grpc.AgentServiceServicer):
    """AgentService that records and lets the test drive assignments."""

    def __init__(self, heartbeat_seconds: int = 1) -> None:
        self.heartbeat_seconds = heartbeat_seconds
        self.lost_after_seconds = 0
        """Announced in Registered (0: not announced)."""
        self.cluster_id = ""
        """Announced in Registered ("": not announced)."""
        self.log_window = 0
        """Announced in Registered; when positive, numbered log batches are
        acknowledged as they arrive (while ``hold_acks`` is false)."""
        self.hold_acks = False
        """Keep acknowledgements back (``release_acks`` sends them)."""
        self.reject: tuple[grpc.StatusCode, str] | None = None
        """When set, every Register is answered by ending the stream with this status."""
        self.streams: list[Stream] = []
        self._changed = asyncio.Condition()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    # -- server lifecycle ----------------------------------------------------------

    async def start(self, port: int = 0) -> int:
        """Serve on 127.0.0.1:``port`` (0: any free port); returns the port."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        """Stop serving; open streams break (the agent sees UNAVAILABLE/CANCELLED)."""
        if self._server is not None:
            for stream in self.streams:
                stream.outbox.put_nowait(None)
            await self._server.stop(grace=0)
            self._server = None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    # -- AgentService ------------------------------------------------------------------

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        """Record requests; answer Register; forward queued assignments."""
        stream = Stream()
        self.streams.append(stream)
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while True:
                msg = await stream.outbox.get()
                if msg is None:
                    return
                if msg is _REJECT:
                    assert self.reject is not None
                    await context.abort(*self.reject)
                assert isinstance(msg, agent_pb2.ConnectResponse)
                yield msg
        finally:
            reader.cancel()
            stream.closed = True
            await self._notify()

    async def _read(
        self, request_iterator: AsyncIterator[agent_pb2.ConnectRequest], stream: Stream
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
            async for request in request_iterator:
                stream.received.append(request)
                stream.arrivals.append(loop.time())
                if request.HasField("register") and self.reject is not None:
                    stream.outbox.put_nowait(_REJECT)
                elif request.HasField("register"):
                    stream.outbox.put_nowait(
                        agent_pb2.ConnectResponse(
                            registered=agent_pb2.Registered(
                                heartbeat_interval_seconds=self.heartbeat_seconds,
                                node_lost_after_seconds=self.lost_after_seconds,
                                cluster_id=self.cluster_id,
                                log_window=self.log_window,
                            )
                        )
                    )
                elif request.HasField("log_batch") and request.log_batch.batch_id:
                    stream.unacked.append(request.log_batch.batch_id)
                    if not self.hold_acks:
                        self.release_acks(stream)
                await self._notify()
        finally:
            stream.outbox.put_nowait(None)

    def release_acks(self, stream: Stream | None = None) -> None:
        """Acknowledge every numbered batch received and not acknowledged yet."""
        stream = stream or self.current
        for batch_id in stream.unacked:
            stream.outbox.put_nowait(
                agent_pb2.ConnectResponse(log_batch_ack=agent_pb2.LogBatchAck(batch_id=batch_id))
            )
        stream.unacked.clear()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- test helpers --------------------------------------------------------------------

    @property
    def current(self) -> Stream:
        """The newest stream."""
        assert self.streams, "no agent connected"
        return self.streams[-1]

    async def wait_for(self, predicate: Callable[[], T], within: float = 5.0, what: str = "") -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every message); return it."""

        async def check() -> T:
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(check(), within)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {what or predicate}; "
                f"received: {[self._short(m) for s in self.streams for m in s.received]}"
            ) from None

    async def wait_registered(self, count: int = 1, within: float = 5.0) -> Stream:
        """Wait until ``count`` streams have sent Register; return the newest."""
        await self.wait_for(
            lambda: sum(1 for s in self.streams if s.register is not None) >= count,
            within,
            f"{count} registration(s)",
        )
        return [s for s in self.streams if s.register is not None][-1]

    async def wait_status(
        self,
        name: str,
        state: int,
        *,
        ready: bool | None = None,
        stream: Stream | None = None,
        within: float = 5.0,
    ) -> agent_pb2.ContainerStatus:
        """Wait for a ContainerStatus of ``name`` in ``state`` (and readiness); return it."""

        def find() -> agent_pb2.ContainerStatus | None:
            for status in (stream or self.current).statuses:
                if status.container_name == name and status.state == state:
                    if ready is None or status.ready == ready:
                        return status
            return None

        label = run_pb2.ContainerState.Name(state)
        found = await self.wait_for(find, within, f"{name} {label} ready={ready}")
        assert found is not None
        return found

    def send(self, msg: agent_pb2.ConnectResponse) -> None:
        """Push an assignment down the newest stream."""
        self.current.outbox.put_nowait(msg)

    def start_container(self, **fields: object) -> None:
        """Send StartContainer with ``fields``."""
        self.send(agent_pb2.ConnectResponse(start_container=agent_pb2.StartContainer(**fields)))

    def teardown(self, run_id: int) -> None:
        """Send TeardownRun."""
        self.send(agent_pb2.ConnectResponse(teardown_run=agent_pb2.TeardownRun(run_id=run_id)))

    def pull_image(self, **fields: object) -> None:
        """Send PullImage with ``fields``."""
        self.send(agent_pb2.ConnectResponse(pull_image=agent_pb2.PullImage(**fields)))

    def list_images(self, request_id: str) -> None:
        """Send ListImages."""
        self.send(
            agent_pb2.ConnectResponse(list_images=agent_pb2.ListImages(request_id=request_id))
        )

    async def wait_image_pulled(
        self, request_id: str, within: float = 5.0
    ) -> agent_pb2.ImagePulled:
        """Wait for the ImagePulled answering ``request_id`` (any stream); return it."""
        return await self.wait_for(
            lambda: next(
                (a for s in self.streams for a in s.images_pulled if a.request_id == request_id),
                None,
            ),
            within,
            f"ImagePulled {request_id}",
        )

    async def wait_images_listed(
        self, request_id: str, within: float = 5.0
    ) -> agent_pb2.ImagesListed:
        """Wait for the ImagesListed answering ``request_id`` (any stream); return it."""
        return await self.wait_for(
            lambda: next(
                (a for s in self.streams for a in s.images_listed if a.request_id == request_id),
                None,
            ),
            within,
            f"ImagesListed {request_id}",
        )

    @staticmethod
    def _short(msg: agent_pb2.ConnectRequest) -> str:
        kind = msg.WhichOneof("message")
        if kind == "container_status":
            s = msg.container_status
            return (
                f"status({s.container_name} {run_pb2.ContainerState.Name(s.state)} "
                f"ready={s.ready} exit={s.exit_code if s.HasField('exit_code') else '-'} "
                f"msg={s.message!r})"
            )
        if kind == "log_batch":
            return f"log_batch({len(msg.log_batch.entries)})"
        return str(kind)
