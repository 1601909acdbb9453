"""What waits to go out on an agent's stream: control messages before log
batches, container states merged into batches, heartbeats that never pile
up (and are skipped while other messages prove the agent alive), and the
window of log batches in flight."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import agent_pb2

LOG_WINDOW = 8
"""Log batches in flight on a stream at once (waiting in the outbox, or sent and not
yet acknowledged); more wait in their followers. Bounds the agent's memory (and the
control plane's) under a log flood."""
STATUS_BATCH = 256
"""Container states that may travel in one ContainerStatusBatch."""


class Outbox:
    """What waits to go out on one stream: control messages first, then log batches.

    Control messages (Register, heartbeats, container states, answers) go out
    in the order they were put, and before any log batch that waits; log
    batches go out in their order. While the stream is stuck (the control plane
    stopped reading, or the connection died and keepalive has not noticed yet),
    heartbeats do not pile up: a heartbeat that is still waiting stands for the
    next ones too, and it is stamped with the time it actually goes out.
    """

    def __init__(self) -> None:
        """An empty outbox."""
        self.batch_statuses = False
        """Container states waiting one after another go out as one
        ContainerStatusBatch (the control plane said it accepts them)."""
        self._control: deque[agent_pb2.ConnectRequest | None] = deque()
        self._logs: deque[agent_pb2.ConnectRequest] = deque()
        self._ready = asyncio.Event()
        self._heartbeat_waiting = False
        self.quiet_when_busy = False
        """Skip a heartbeat when a message went out within the last half
        interval (the control plane said any message proves the agent alive)."""
        self._last_out = -math.inf  # monotonic instant the last message was handed over

    def put(self, msg: agent_pb2.ConnectRequest) -> None:
        """Queue ``msg`` (behind the control messages when it is a log batch)."""
        (self._logs if msg.HasField("log_batch") else self._control).append(msg)
        self._ready.set()

    def heartbeat(self, interval: float = 0.0) -> None:
        """Queue a heartbeat unless one is already waiting, or (`quiet_when_busy`)
        a message went out less than half the heartbeat `interval` ago: the
        control plane then hears from the agent at least every 1.5 intervals."""
        if self.quiet_when_busy and time.monotonic() - self._last_out < interval / 2:
            return
        if not self._heartbeat_waiting:
            self._heartbeat_waiting = True
            self._control.append(None)
            self._ready.set()

    def qsize(self) -> int:
        """Messages waiting."""
        return len(self._control) + len(self._logs)

    async def get(self) -> agent_pb2.ConnectRequest:
        """The next message (waiting for one); a heartbeat gets the current time."""
        while not (self._control or self._logs):
            self._ready.clear()
            await self._ready.wait()
        self._last_out = time.monotonic()
        if not self._control:
            return self._logs.popleft()
        msg = self._control.popleft()
        if msg is not None:
            return self._with_following_statuses(msg) if self.batch_statuses else msg
        self._heartbeat_waiting = False
        now = Timestamp()
        now.GetCurrentTime()
        return agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(time=now))

    def _with_following_statuses(self, msg: agent_pb2.ConnectRequest) -> agent_pb2.ConnectRequest:
        """`msg` and the container states queued right behind it, as one
        message when there are several (order kept; at most STATUS_BATCH)."""
        if not msg.HasField("container_status"):
            return msg
        statuses = [msg.container_status]
        while len(statuses) < STATUS_BATCH and self._control:
            following = self._control[0]
            if following is None or not following.HasField("container_status"):
                break
            self._control.popleft()
            statuses.append(following.container_status)
        if len(statuses) == 1:
            return msg
        batch = agent_pb2.ContainerStatusBatch(statuses=statuses)
        return agent_pb2.ConnectRequest(container_statuses=batch)


class LogWindow:
    """The log batches of one stream in flight: at most a window of them.

    Without acknowledgements (the default), a batch is in flight from the moment
    it enters the outbox until it is handed to gRPC, and :meth:`send`'s future
    is done at that moment (not before: status messages overtake batches that
    wait in the outbox, so "queued" is not "sent"). With them
    (:meth:`use_acks`, when the control plane announced a log window), batches
    are numbered 1, 2, ... and stay in flight until the control plane
    acknowledges them (stored); :meth:`send` then returns a future that is done
    at that moment, so a follower can tell when its last line is stored.
    """

    def __init__(self, outbox: Outbox, size: int = LOG_WINDOW) -> None:
        """Batches go to ``outbox``; at most ``size`` in flight."""
        self._outbox = outbox
        self._size = size
        self._slots = asyncio.Semaphore(size)
        self._acks = False
        self._next_id = 1
        self._unacked: dict[int, asyncio.Future[None]] = {}
        self._queued: deque[asyncio.Future[None]] = deque()
        """Without acknowledgements: one future per batch in the outbox, in order."""

    def use_acks(self, window: int) -> None:
        """The control plane acknowledges batches and takes ``window`` at a time
        (0: it does not acknowledge; nothing changes). Before the first batch."""
        if window > 0:
            self._acks = True
            self._slots = asyncio.Semaphore(min(self._size, window))

    async def send(self, batch: agent_pb2.LogBatch) -> asyncio.Future[None]:
        """Queue ``batch`` once the window has room; returns the future that is
        done once it was handed to gRPC (with acknowledgements: stored)."""
        await self._slots.acquire()
        if not self._acks:
            handed = asyncio.get_running_loop().create_future()
            self._queued.append(handed)
            self._outbox.put(agent_pb2.ConnectRequest(log_batch=batch))
            return handed
        batch.batch_id = self._next_id
        self._next_id += 1
        stored = asyncio.get_running_loop().create_future()
        self._unacked[batch.batch_id] = stored
        self._outbox.put(agent_pb2.ConnectRequest(log_batch=batch))
        return stored

    def sent(self) -> None:
        """A batch was handed to gRPC (batches leave the outbox in order)."""
        if not self._acks:
            if self._queued and not (handed := self._queued.popleft()).done():
                handed.set_result(None)
            self._slots.release()

    def acked(self, batch_id: int) -> None:
        """The control plane stored batches up to ``batch_id`` (acknowledged in order)."""
        for done in [i for i in self._unacked if i <= batch_id]:
            future = self._unacked.pop(done)
            if not future.done():
                future.set_result(None)
            self._slots.release()

    def close(self) -> None:
        """The stream ended: no acknowledgement will come."""
        unacked, self._unacked = self._unacked, {}
        queued, self._queued = self._queued, deque()
        for future in [*unacked.values(), *queued]:
            future.cancel()
