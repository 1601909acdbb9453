"""The agent's side of ``AgentService.Connect``: one stream at a time, forever.

Each session opens a stream, sends Register (with a fresh snapshot of every
container on the node), waits for Registered, then heartbeats while it applies
assignments, answers PullImage and ListImages (on the stream they came from;
an answer whose stream has ended is dropped, the pull itself goes on) and
forwards the supervisor's status changes and, only once Registered has
arrived, the containers' logs (a rejected session, such as a duplicate node
name, starts no log followers).

Liveness first: the outbox sends heartbeats, status changes and answers
before any log batch, and at most a window of log batches is in flight (8):
with a control plane that acknowledges stored batches (Registered.log_window),
a batch leaves the window when it is acknowledged, so the control plane never
has more than the window to store and always reads the stream promptly; with
one that does not, when it is handed to gRPC. A log flood therefore never
delays a heartbeat by more than the one batch (at most 1 MiB) being written.

When the stream
breaks or the control plane is unreachable, the agent reconnects with jittered
exponential backoff; containers are never touched by a reconnect, so the next
Register simply re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from agent.backoff import backoff
from agent.leaders import EpochGuard, Targets, leader_hint
from agent.logutil import log
from agent.messages import NETWORK_MODE_TO_PB, PullRequest, start_from_pb
from agent.outbox import LogWindow, Outbox
from agent.runtime import NetworkMode
from agent.supervisor import Supervisor
from muster.common.leaders import split_addresses
from muster.common.limits import AGENT_MAX_SEND_BYTES
from muster.v1 import agent_pb2, agent_pb2_grpc, node_pb2

_log = logging.getLogger(__name__)
DEFAULT_HEARTBEAT_SECONDS = 5.0

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping every 10 s and give up after 5 s without an answer, so a dead
    # control plane or a silently dropped connection breaks the stream (and
    # the agent reconnects) even while nothing else is sent. The control
    # plane's server is configured to accept pings this often.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Log batches are at most 1 MiB; the control plane receives twice this.
    ("grpc.max_send_message_length", AGENT_MAX_SEND_BYTES),
)
"""Options of the agent's channel to the control plane."""


@dataclass(frozen=True)
class Identity:
    """What the agent tells the control plane about its node in Register."""

    node_name: str
    pools: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_devices: tuple[str, ...] = ()
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
        return backoff(self.initial, self.maximum, attempt + 1, rng)


ChannelFactory = Callable[[], grpc.aio.Channel]
"""Opens a new channel to the control plane for each session."""
AddressedChannels = Callable[[str], grpc.aio.Channel]
"""Opens a new channel to one control plane address (several control planes)."""


class StaleLeader(Exception):
    """A message came from a leader older than one the agent has already seen."""


def plaintext(server: str) -> ChannelFactory:
    """Channels without TLS (a control plane started with --insecure)."""
    return lambda: grpc.aio.insecure_channel(server, options=CHANNEL_OPTIONS)


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
        channel: ChannelFactory | None = None,
        channel_to: AddressedChannels | None = None,
        epochs: EpochGuard | None = None,
    ) -> None:
        """``server`` is ``host:port`` of the control plane, or several,
        comma-separated (control planes sharing a database: the agent follows
        their leader). ``channel_to`` opens a channel to one of them
        (``channel``, to the one control plane; plaintext when neither is
        given). ``epochs`` remembers the newest leader's epoch."""
        self._targets = Targets(split_addresses(server) or [server])
        self._fixed_channel = channel
        self._channel_to = channel_to
        self.epochs = epochs or EpochGuard()
        self.fence_after: float | None = None
        """Seconds the control plane waits before declaring a silent node Lost
        (learned at registration); how long the agent may be cut off before it
        stops its runs' containers by itself."""
        self._cut_since: float | None = time.monotonic()
        self._identity = identity
        self._sup = supervisor
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._registered = False

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
            network_mode=NETWORK_MODE_TO_PB[ident.network_mode],
            network_name=ident.network_name,
            containers=[s.to_pb() for s in self._sup.snapshot()],
            instance_id=ident.instance_id,
            gpu_devices=list(ident.gpu_devices),
            accepts_start_batches=True,
        )

    @property
    def _server(self) -> str:
        return self._targets.current

    def _channel(self) -> grpc.aio.Channel:
        if self._channel_to is not None:
            return self._channel_to(self._targets.current)
        if self._fixed_channel is not None:
            return self._fixed_channel()
        return plaintext(self._targets.current)()

    def cut_for(self) -> float:
        """Seconds since the agent last had a registered stream (0 while it has one)."""
        return 0.0 if self._cut_since is None else time.monotonic() - self._cut_since

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
                self._cut_since = time.monotonic()
            error = None if session.cancelled() else session.exception()
            left = self._server
            self._targets.failed(error)
            delay = self._backoff.delay(attempt, self._rng)
            if leader_hint(error) is not None:
                delay = min(delay, 0.1)  # a follower named the leader: go there now
            attempt += 1
            log(
                _log,
                logging.WARNING,
                "disconnected",
                server=left,
                reason=reason,
                next_server=self._server,
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
        async with self._channel() as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            outbox = Outbox()
            window = LogWindow(outbox)

            # Refresh the view of the node first; between the snapshot and
            # attaching the sink there is no await, so no change is lost or
            # sent before Register.
            await self._sup.reconcile()
            outbox.put(agent_pb2.ConnectRequest(register=self.register_message()))
            self._sup.attach(
                lambda status: outbox.put(agent_pb2.ConnectRequest(container_status=status.to_pb()))
            )
            call = stub.Connect(self._drain(outbox, window))
            heartbeat: asyncio.Task[None] | None = None
            try:
                async for response in call:
                    kind = response.WhichOneof("message")
                    self._admit(response.epoch, kind)
                    if kind == "registered":
                        if heartbeat is not None:
                            heartbeat.cancel()
                        outbox.batch_statuses = response.registered.accepts_status_batches
                        outbox.quiet_when_busy = response.registered.any_message_is_alive
                        interval = self._on_registered(response.registered, window)
                        heartbeat = asyncio.create_task(self._heartbeat(outbox, interval))
                    else:
                        self._dispatch(kind, response, outbox, window)
            finally:
                self._sup.detach()
                window.close()
                if heartbeat is not None:
                    heartbeat.cancel()
                call.cancel()

    def _admit(self, epoch: int, kind: str | None) -> None:
        """Refuse a message from a leader older than the newest one seen."""
        if not self.epochs.admit(epoch, kind or "none"):
            raise StaleLeader(
                f"epoch {epoch} is older than {self.epochs.newest}: "
                "that control plane no longer leads"
            )

    def _on_registered(self, registered: agent_pb2.Registered, window: LogWindow) -> float:
        """Take in what Registered says; returns the heartbeat interval in seconds."""
        seconds = registered.heartbeat_interval_seconds
        interval = float(seconds) if seconds > 0 else DEFAULT_HEARTBEAT_SECONDS
        self._cut_since = None
        lost_after = registered.node_lost_after_seconds
        self.fence_after = float(lost_after) if lost_after > 0 else None
        # Before any log follower starts: another cluster's
        # containers are dropped, never followed.
        self._sup.join_cluster(registered.cluster_id)
        if not self._registered:
            # Logs only for an accepted session: a rejected one
            # (say, a duplicate node name) starts no followers.
            window.use_acks(registered.log_window)
            self._sup.attach_logs(lambda batch: window.send(batch.to_pb()))
        self._registered = True
        self._targets.connected()
        log(
            _log,
            logging.INFO,
            "registered",
            server=self._server,
            node=self._identity.node_name,
            containers=len(self._sup.snapshot()),
            heartbeat_seconds=interval,
        )
        return interval

    def _dispatch(
        self,
        kind: str | None,
        response: agent_pb2.ConnectResponse,
        outbox: Outbox,
        window: LogWindow,
    ) -> None:
        """Hand a message other than Registered to the supervisor or the log window."""
        if kind == "start_container":
            self._start(response.start_container)
        elif kind == "start_containers":
            for start in response.start_containers.starts:
                self._start(start)
        elif kind == "teardown_run":
            self._sup.handle_teardown(response.teardown_run.run_id)
        elif kind == "pull_image":
            self._sup.handle_pull_image(
                PullRequest.from_pb(response.pull_image),
                lambda a: outbox.put(a.to_pb()),
            )
        elif kind == "list_images":
            self._sup.handle_list_images(
                response.list_images.request_id, lambda a: outbox.put(a.to_pb())
            )
        elif kind == "log_batch_ack":
            window.acked(response.log_batch_ack.batch_id)
        else:
            log(_log, logging.WARNING, "unknown_message", kind=kind)

    def _start(self, start: agent_pb2.StartContainer) -> None:
        if (spec := start_from_pb(start)) is not None:
            self._sup.handle_start(spec)

    @staticmethod
    async def _drain(outbox: Outbox, window: LogWindow) -> AsyncIterator[agent_pb2.ConnectRequest]:
        while True:
            msg = await outbox.get()
            yield msg
            if msg.HasField("log_batch"):
                window.sent()

    @staticmethod
    async def _heartbeat(outbox: Outbox, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            outbox.heartbeat(interval)
