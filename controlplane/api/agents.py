"""AgentService servicer: one long-lived bidirectional stream per agent.

The first message must be Register. Afterwards a reader task feeds heartbeats,
container reports and log batches to the orchestrator, while this generator
sends whatever the orchestrator queued on the agent's link.

Log batches never hold up heartbeats or container reports: a numbered batch
(the agent saw `log_window` in Registered) goes to a bounded queue that a task
of its own stores in order, acknowledging each batch once stored. The agent
keeps at most the window unacknowledged, so the queue always has room and the
reader never waits for the store on a batch's account. (Should an agent send
more anyway, the reader waits for room: backpressure, never loss.) Batches
without a number (an agent that does not take acknowledgements) are stored by
the reader itself, in stream order, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import grpc

from controlplane.api.agent_traffic import AgentTraffic
from controlplane.api.auth import current_node
from controlplane.api.convert import (
    log_lines_from_pb,
    node_from_register,
    node_images_from_pb,
    node_pull_from_pb,
    pull_order_to_pb,
    report_from_pb,
    start_to_pb,
)
from controlplane.api.errors import grpc_errors, status_code
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import (
    DomainError,
    FailedPrecondition,
    PermissionDenied,
    StoreUnavailable,
)
from controlplane.core.nodes import check_registration
from controlplane.services.auth import AuthService
from controlplane.services.images import ImageService
from controlplane.services.leadership import Leadership
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator, PullOrder, Report
from muster.v1 import agent_pb2 as pb
from muster.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_CLOSE = object()
MAX_QUEUED = 10_000
"""Messages that may wait for one agent's stream before it is closed (see GrpcAgentLink)."""
START_BATCH = 64
"""Starts that may travel in one StartContainerBatch."""
LOG_WINDOW = 8
"""Log batches an agent may have unacknowledged (the ingest queue's size per stream)."""


class GrpcAgentLink:
    """AgentLink over one Connect stream: a bounded queue of outgoing messages.

    An agent that does not take its messages (a stuck connection, a slow
    host) must not make the control plane hold an unbounded backlog: once
    `max_queued` messages wait, the backlog is dropped and the link closed.
    The stream ends, the agent reconnects, and its Register is reconciled as
    after any reconnect: starts it lacks are sent again, leftovers of finished
    runs torn down, and image requests that were waiting answered as failed.

    With `batch_starts` (the agent said it accepts_start_batches), starts
    queued one after another while the stream is busy travel as one
    StartContainerBatch (up to START_BATCH of them)."""

    def __init__(self, node: str, max_queued: int = MAX_QUEUED, batch_starts: bool = False) -> None:
        self.node = node
        self.max_queued = max_queued
        self.batch_starts = batch_starts
        self.closed = False
        self._queue: deque[pb.ConnectResponse | object] = deque()
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        """Messages waiting (a batch of starts counts once)."""
        return len(self._queue)

    def take_nowait(self) -> pb.ConnectResponse | object | None:
        """The next message (or _CLOSE), None when nothing waits."""
        return self._queue.popleft() if self._queue else None

    async def take(self) -> pb.ConnectResponse | object:
        """The next message (or _CLOSE), waiting for one."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def _put(self, message: pb.ConnectResponse) -> None:
        if self.closed:
            return  # the stream is ending: the agent's next Register catches up
        if len(self._queue) >= self.max_queued:
            log.warning(
                "event=agent_queue_full node=%s queued=%d action=close_stream",
                self.node,
                len(self._queue),
            )
            self._queue.clear()
            self.close()
            return
        self._queue.append(message)
        self._ready.set()

    def start(self, spec: ContainerSpec) -> None:
        """Queue a StartContainer (joining the batch of starts queued last, if any)."""
        start = start_to_pb(spec)
        if self.batch_starts:
            last = self._queue[-1] if self._queue and not self.closed else None
            if isinstance(last, pb.ConnectResponse) and last.HasField("start_containers"):
                if len(last.start_containers.starts) < START_BATCH:
                    last.start_containers.starts.append(start)
                    return
            batch = pb.StartContainerBatch(starts=[start])
            self._put(pb.ConnectResponse(start_containers=batch))
            return
        self._put(pb.ConnectResponse(start_container=start))

    def teardown(self, run_id: int) -> None:
        """Queue a TeardownRun."""
        self._put(pb.ConnectResponse(teardown_run=pb.TeardownRun(run_id=run_id)))

    def close(self) -> None:
        """End the stream once what is queued was sent (a newer connection of
        the same node replaced it, the node was removed, or the queue overflowed)."""
        if not self.closed:
            self.closed = True
            self._queue.append(_CLOSE)
            self._ready.set()

    def pull_image(self, order: PullOrder) -> None:
        """Queue a PullImage."""
        self._put(pb.ConnectResponse(pull_image=pull_order_to_pb(order)))

    def list_images(self, request_id: str) -> None:
        """Queue a ListImages."""
        self._put(pb.ConnectResponse(list_images=pb.ListImages(request_id=request_id)))

    def logs_stored(self, batch_id: int) -> None:
        """Queue a LogBatchAck."""
        self._put(pb.ConnectResponse(log_batch_ack=pb.LogBatchAck(batch_id=batch_id)))


@dataclass
class JoinInfo:
    """What a joining agent is told besides its certificate (known once listening)."""

    ca_pem: bytes = b""
    agent_port: int = 0


def check_claims(register: pb.Register) -> None:
    """Node restriction: with a node certificate, an agent may register only
    under the certificate's name and claim only the pools it grants."""
    cert = current_node()
    if cert is None:
        return
    if register.node_name != cert.node:
        raise PermissionDenied(
            f"this agent's certificate is for node '{cert.node}'; it may not register as "
            f"'{register.node_name}'"
        )
    extra = sorted(set(register.pools) - set(cert.pools))
    if extra:
        raise PermissionDenied(
            f"node '{cert.node}' may join only pools {', '.join(cert.pools)} (its join token's); "
            f"not {', '.join(extra)}"
        )


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Serves Connect streams, joins and certificate renewals."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        logs: LogService,
        auth: AuthService | None = None,
        join_info: JoinInfo | None = None,
        images: ImageService | None = None,
        leadership: Leadership | None = None,
        traffic: AgentTraffic | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self.traffic = traffic or AgentTraffic()
        """Messages counted by kind and direction (read by the metrics)."""
        self._leadership = leadership
        self._logs = logs
        self._auth = auth
        self._join_info = join_info or JoinInfo()
        self._images = images or ImageService(orchestrator)

    def _secured(self) -> AuthService:
        if self._auth is None:
            raise FailedPrecondition(
                "this control plane runs with --insecure: agents connect without joining "
                "(start the agent with --insecure)"
            )
        return self._auth

    @grpc_errors
    async def Join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext
    ) -> pb.JoinResponse:
        joined = await self._secured().join(
            request.join_token,
            request.node_name,
            request.csr_pem.encode(),
            self._orchestrator.knows_node,
        )
        return pb.JoinResponse(
            certificate_pem=joined.certificate_pem.decode(),
            ca_pem=self._join_info.ca_pem.decode(),
            agent_port=self._join_info.agent_port,
            pools=list(joined.pools),
        )

    @grpc_errors
    async def RenewCertificate(
        self, request: pb.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewCertificateResponse:
        auth, cert = self._secured(), current_node()
        assert cert is not None  # the interceptor admits only verified nodes
        renewed = await auth.renew(cert, request.csr_pem.encode())
        log.info("event=certificate_renewed node=%s", cert.node)
        return pb.RenewCertificateResponse(certificate_pem=renewed.decode())

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConnectResponse]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        self.traffic.got(first, first.WhichOneof("message") or "")
        link, cluster = await self._accept(first, context)
        name = link.node
        reader: asyncio.Task[None] | None = None
        get: asyncio.Future[pb.ConnectResponse | object] | None = None
        deposed = asyncio.ensure_future(self._deposed())
        try:
            # Registered goes first; what connect() queued on the link follows.
            registered = self._registered(cluster)
            if self._stamp(registered, name):
                self.traffic.put(registered)
                yield registered
                reader = asyncio.create_task(self._read(name, request_iterator, link))
            while reader is not None:
                message = link.take_nowait() if not reader.done() else None
                if message is None:  # nothing waits: wait for a message, the agent or a deposal
                    get = asyncio.ensure_future(link.take())
                    done, _ = await asyncio.wait(
                        {get, reader, deposed}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if get not in done:
                        get.cancel()
                        break
                    message = get.result()
                if message is _CLOSE or not self._stamp(message, name):
                    break
                out = cast(pb.ConnectResponse, message)  # _stamp checked it
                self.traffic.put(out)
                yield out
        finally:
            deposed.cancel()
            if get is not None:
                get.cancel()  # the agent went away while we waited: no pending read left behind
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            self._images.node_gone(name, link)
            await self._orchestrator.disconnect(name, link)

    async def _accept(
        self, first: pb.ConnectRequest, context: grpc.aio.ServicerContext
    ) -> tuple[GrpcAgentLink, str]:
        """Check the stream's Register and connect its node with the containers it
        reports; aborts the call when refused. Returns the node's link and the
        cluster id."""
        if not first.HasField("register"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Register"
            )
        register = first.register
        try:
            node = node_from_register(register)
            check_registration(node)
            check_claims(register)
        except DomainError as error:
            log.warning("event=register_refused node=%s reason=%r", register.node_name, str(error))
            await context.abort(status_code(error), str(error))
        name = register.node_name
        link = GrpcAgentLink(name, batch_starts=register.accepts_start_batches)
        try:
            cluster = await self._orchestrator.cluster()
            reports = [
                r for c in register.containers if (r := _report(name, c, cluster)) is not None
            ]
            await self._orchestrator.connect(node, link, reports)
        except DomainError as error:
            log.warning("event=register_refused node=%s reason=%r", name, str(error))
            await context.abort(status_code(error), str(error))
        except StoreUnavailable as error:  # the agent retries; nothing changed in memory
            log.error("event=register_failed node=%s error=%r", name, str(error))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the control plane's store is unavailable ({error})"
            )
        return link, cluster

    def _registered(self, cluster: str) -> pb.ConnectResponse:
        """What a node is told once registered: heartbeats, liveness, cluster, log window."""
        settings = self._orchestrator.settings
        return pb.ConnectResponse(
            registered=pb.Registered(
                heartbeat_interval_seconds=settings.heartbeat_seconds,
                node_lost_after_seconds=int(settings.liveness.lost.total_seconds()),
                cluster_id=cluster,
                log_window=LOG_WINDOW,
                accepts_status_batches=True,
                any_message_is_alive=True,
            )
        )

    def _stamp(self, message: pb.ConnectResponse | object, node: str) -> bool:
        """Give an outgoing message this leader's epoch, if it still leads:
        a leader whose lease ran out (say, after a pause) sends nothing more
        and ends the stream, so the agent goes to find the new leader."""
        assert isinstance(message, pb.ConnectResponse)
        if self._leadership is None:
            return True
        if not self._leadership.acting():
            log.warning(
                "event=agent_stream_ended node=%s reason=not_leader epoch=%d",
                node,
                self._leadership.epoch,
            )
            return False
        message.epoch = self._leadership.epoch
        return True

    async def _deposed(self) -> None:
        """Done when this control plane is deposed (never without leadership)."""
        if self._leadership is None:
            await asyncio.Event().wait()
        else:
            await self._leadership.deposed.wait()

    async def _read(
        self, name: str, requests: AsyncIterator[pb.ConnectRequest], link: GrpcAgentLink
    ) -> None:
        """Consume the stream until it ends or storing its logs fails."""
        batches: asyncio.Queue[pb.LogBatch] = asyncio.Queue(LOG_WINDOW)
        store = asyncio.create_task(self._store_logs(name, batches, link))
        consume = asyncio.create_task(self._consume(name, requests, batches))
        try:
            done, _ = await asyncio.wait({store, consume}, return_when=asyncio.FIRST_COMPLETED)
            if consume in done and consume.exception() is None and not store.done():
                # The agent closed its side: store what it sent (unless that fails).
                stored = asyncio.ensure_future(batches.join())
                await asyncio.wait({stored, store}, return_when=asyncio.FIRST_COMPLETED)
                stored.cancel()
                done = {consume, store} if store.done() else {consume}
            for task in done:
                task.result()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.info("event=agent_stream_ended node=%s code=%s", name, exc.code().name)
        except Exception:
            log.exception("event=agent_stream_failed node=%s", name)
        finally:
            for task in (store, consume):
                task.cancel()
            await asyncio.gather(store, consume, return_exceptions=True)

    async def _store_logs(
        self, name: str, batches: asyncio.Queue[pb.LogBatch], link: GrpcAgentLink
    ) -> None:
        """Store numbered log batches in order, acknowledging each once stored."""
        while True:
            batch = await batches.get()
            try:
                await self._logs.ingest_from(name, log_lines_from_pb(batch))
                link.logs_stored(batch.batch_id)
            finally:
                batches.task_done()

    async def _consume(
        self,
        name: str,
        requests: AsyncIterator[pb.ConnectRequest],
        batches: asyncio.Queue[pb.LogBatch],
    ) -> None:
        async for message in requests:
            # Any message proves the agent alive and brings a NotReady node
            # back (Registered says so: a busy agent sends no heartbeats).
            await self._orchestrator.heartbeat(name)
            kind = message.WhichOneof("message")
            self.traffic.got(message, kind or "")
            if kind == "heartbeat":
                pass  # taken in above, as every message is
            elif kind == "container_status":
                if (report := self._admissible(name, message.container_status)) is not None:
                    await self._orchestrator.report(name, report)
            elif kind == "container_statuses":
                reports = [
                    report
                    for status in message.container_statuses.statuses
                    if (report := self._admissible(name, status)) is not None
                ]
                await self._orchestrator.report_all(name, reports)
            elif kind == "log_batch":
                if message.log_batch.batch_id:
                    await batches.put(message.log_batch)  # room unless the agent overran its window
                else:
                    await self._logs.ingest_from(name, log_lines_from_pb(message.log_batch))
            elif kind == "image_pulled":
                answer = message.image_pulled
                self._images.answer(name, answer.request_id, node_pull_from_pb(answer))
            elif kind == "images_listed":
                listed = message.images_listed
                self._images.answer(name, listed.request_id, node_images_from_pb(listed))
            else:
                log.warning("event=unexpected_agent_message node=%s kind=%s", name, kind)

    def _admissible(self, name: str, status: pb.ContainerStatus) -> Report | None:
        """The report a status makes, or None (logged) when it is not this
        cluster's, not understood, or about a replica not placed on `name`
        (node restriction: a node speaks only for its own replicas)."""
        report = _report(name, status, self._orchestrator.cluster_id)
        if report is None:
            return None
        obs = report.observation
        if self._orchestrator.placed_on(name, report.run_id, obs.role, obs.index) is False:
            log.warning(
                "event=report_refused node=%s run=%d replica=%s-%d reason=not_placed_here",
                name,
                report.run_id,
                obs.role,
                obs.index,
            )
            return None
        return report


def _report(node: str, status: pb.ContainerStatus, cluster: str) -> Report | None:
    """A container status in domain terms, or None (logged) when it carries a
    role or state this control plane does not know, or belongs to another
    cluster (an agent reports those only until it has learned its cluster id
    from Registered; containers without a cluster id are this cluster's)."""
    if status.cluster_id and status.cluster_id != cluster:
        log.info(
            "event=report_ignored node=%s run=%d container=%s reason=other_cluster cluster=%s",
            node,
            status.run_id,
            status.container_name[:100],
            status.cluster_id[:40],
        )
        return None
    try:
        return report_from_pb(status)
    except DomainError as error:
        log.warning(
            "event=report_refused node=%s run=%d container=%s reason=%r",
            node,
            status.run_id,
            status.container_name[:100],
            str(error),
        )
        return None
