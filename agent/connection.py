"""The agent's side of ``AgentService.Connect``: one stream at a time, forever.

Each session opens a stream, sends Register (with a fresh snapshot of every
container on the node), waits for Registered, then heartbeats while it applies
assignments and forwards the supervisor's status changes. When the stream
breaks or the control plane is unreachable, the agent reconnects with jittered
exponential backoff; containers are never touched by a reconnect, so the next
Register simply re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent.logutil import log
from agent.messages import NETWORK_MODE_TO_PB
from agent.runtime import NetworkMode
from agent.supervisor import Supervisor
from muster.v1 import agent_pb2, agent_pb2_grpc, node_pb2

_log = logging.getLogger(__name__)
DEFAULT_HEARTBEAT_SECONDS = 5.0
LOG_WINDOW = 8
"""Log batches that may wait in a stream's outbox at once; more wait in their followers.

Bounds the agent's memory under a log flood, and keeps heartbeats and status
changes (which share the outbox) from queueing behind a long run of batches.
"""


@dataclass(frozen=True)
class Identity:
    """What the agent tells the control plane about its node in Register."""

    node_name: str
    pools: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    advertise_address: str = "127.0.0.1"
    agent_version: str = ""
    network_mode: NetworkMode = "bridge"
    network_name: str = "muster"
    # Distinguishes this process from another agent using the same node name.
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: ``initial * 2**n``, capped, times U(0.5, 1)."""

    initial: float = 0.2
    maximum: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * (2 ** min(attempt, 30)))
        return base * rng.uniform(0.5, 1.0)


class AgentConnection:
    """Keeps one Connect stream alive and wires it to a :class:`Supervisor`."""

    def __init__(
        self,
        server: str,
        identity: Identity,
        supervisor: Supervisor,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``server`` is ``host:port`` of the control plane."""
        self._server = server
        self._identity = identity
        self._sup = supervisor
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._registered = False
        self.sessions = 0
        """Streams opened so far (tests and metrics)."""
        self.registered = asyncio.Event()
        """Set while a stream is registered, cleared when it breaks."""

    def register_message(self) -> agent_pb2.Register:
        """Register for a new stream, with every container currently on the node."""
        ident = self._identity
        return agent_pb2.Register(
            node_name=ident.node_name,
            pools=list(ident.pools),
            labels=dict(ident.labels),
            allocatable=node_pb2.Capacity(
                cpu_millis=ident.cpu_millis, memory_bytes=ident.memory_bytes, gpus=ident.gpus
            ),
            advertise_address=ident.advertise_address,
            agent_version=ident.agent_version,
            network_mode=NETWORK_MODE_TO_PB[ident.network_mode],  # type: ignore[arg-type]
            network_name=ident.network_name,
            containers=self._sup.snapshot(),
            instance_id=ident.instance_id,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run sessions until ``stop`` is set, reconnecting with backoff."""
        attempt = 0
        while not stop.is_set():
            self._registered = False
            session = asyncio.create_task(self._session(), name="agent-session")
            stopper = asyncio.create_task(stop.wait(), name="agent-stop")
            done, _ = await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:
                stopper.cancel()
            if session not in done:
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await session
                break
            reason = self._describe(session)
            if self._registered:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            log(
                _log,
                logging.WARNING,
                "disconnected",
                server=self._server,
                reason=reason,
                retry_in=f"{delay:.2f}s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        log(_log, logging.INFO, "connection_stopped", server=self._server)

    @staticmethod
    def _describe(session: asyncio.Task[None]) -> str:
        if session.cancelled():
            return "cancelled"
        exc = session.exception()
        if exc is None:
            return "stream closed by server"
        if isinstance(exc, grpc.aio.AioRpcError):
            return f"{exc.code().name}: {exc.details()}"
        return f"{type(exc).__name__}: {exc}"

    async def _session(self) -> None:
        """One stream: Register, then serve until it ends (returns or raises)."""
        self.sessions += 1
        async with grpc.aio.insecure_channel(self._server) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            outbox: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
            window = asyncio.Semaphore(LOG_WINDOW)

            async def send_logs(batch: agent_pb2.LogBatch) -> None:
                await window.acquire()  # released once _drain hands the batch to gRPC
                outbox.put_nowait(agent_pb2.ConnectRequest(log_batch=batch))

            # Refresh the view of the node first; between the snapshot and
            # attaching the sink there is no await, so no change is lost or
            # sent before Register.
            await self._sup.reconcile()
            outbox.put_nowait(agent_pb2.ConnectRequest(register=self.register_message()))
            self._sup.attach(
                lambda status: outbox.put_nowait(agent_pb2.ConnectRequest(container_status=status)),
                logs=send_logs,
            )
            call = stub.Connect(self._drain(outbox, window))
            heartbeat: asyncio.Task[None] | None = None
            try:
                async for response in call:
                    kind = response.WhichOneof("message")
                    if kind == "registered":
                        seconds = response.registered.heartbeat_interval_seconds
                        interval = float(seconds) if seconds > 0 else DEFAULT_HEARTBEAT_SECONDS
                        if heartbeat is not None:
                            heartbeat.cancel()
                        heartbeat = asyncio.create_task(self._heartbeat(outbox, interval))
                        self._registered = True
                        self.registered.set()
                        log(
                            _log,
                            logging.INFO,
                            "registered",
                            server=self._server,
                            node=self._identity.node_name,
                            containers=len(self._sup.snapshot()),
                            heartbeat_seconds=interval,
                        )
                    elif kind == "start_container":
                        self._sup.handle_start(response.start_container)
                    elif kind == "teardown_run":
                        self._sup.handle_teardown(response.teardown_run.run_id)
                    else:
                        log(_log, logging.WARNING, "unknown_message", kind=kind)
            finally:
                self.registered.clear()
                self._sup.detach()
                if heartbeat is not None:
                    heartbeat.cancel()
                call.cancel()

    @staticmethod
    async def _drain(
        outbox: asyncio.Queue[agent_pb2.ConnectRequest], window: asyncio.Semaphore
    ) -> AsyncIterator[agent_pb2.ConnectRequest]:
        while True:
            msg = await outbox.get()
            yield msg
            if msg.HasField("log_batch"):
                window.release()

    @staticmethod
    async def _heartbeat(outbox: asyncio.Queue[agent_pb2.ConnectRequest], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            now = Timestamp()
            now.GetCurrentTime()
            outbox.put_nowait(agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(time=now)))
