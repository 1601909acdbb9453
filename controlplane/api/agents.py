"""AgentService servicer: one long-lived bidirectional stream per agent.

The first message must be Register. Afterwards a reader task feeds heartbeats,
container reports and log batches to the orchestrator, while this generator
sends whatever the orchestrator queued on the agent's link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from controlplane.api.convert import (
    log_lines_from_pb,
    node_from_register,
    report_from_pb,
    start_to_pb,
)
from controlplane.api.errors import status_code
from controlplane.core.codespec import NAME_RE
from controlplane.core.containers import ContainerSpec
from controlplane.core.errors import DomainError
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator
from muster.v1 import agent_pb2 as pb
from muster.v1 import agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_CLOSE = object()


class GrpcAgentLink:
    """AgentLink over one Connect stream: a queue of outgoing messages."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.queue: asyncio.Queue[pb.ConnectResponse | object] = asyncio.Queue()

    def start(self, spec: ContainerSpec) -> None:
        """Queue a StartContainer."""
        self.queue.put_nowait(pb.ConnectResponse(start_container=start_to_pb(spec)))

    def teardown(self, run_id: int) -> None:
        """Queue a TeardownRun."""
        self.queue.put_nowait(pb.ConnectResponse(teardown_run=pb.TeardownRun(run_id=run_id)))

    def close(self) -> None:
        """End the stream (a newer connection of the same node replaced it)."""
        self.queue.put_nowait(_CLOSE)


class AgentServicer(pb_grpc.AgentServiceServicer):
    """Serves Connect streams."""

    def __init__(self, orchestrator: Orchestrator, logs: LogService) -> None:
        self._orchestrator = orchestrator
        self._logs = logs

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConnectResponse]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if not first.HasField("register"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a Register"
            )
        register = first.register
        if not NAME_RE.match(register.node_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node_name: '{register.node_name}' is not a valid node name",
            )
        name = register.node_name
        link = GrpcAgentLink(name)
        interval = int(self._orchestrator.settings.heartbeat_interval.total_seconds()) or 1
        reports = [report_from_pb(c) for c in register.containers]
        try:
            await self._orchestrator.connect(node_from_register(register), link, reports)
        except DomainError as error:
            log.warning("event=register_refused node=%s reason=%r", name, str(error))
            await context.abort(status_code(error), str(error))
        reader: asyncio.Task[None] | None = None
        try:
            # Registered goes first; what connect() queued on the link follows.
            yield pb.ConnectResponse(registered=pb.Registered(heartbeat_interval_seconds=interval))
            reader = asyncio.create_task(self._read(name, request_iterator))
            while True:
                get = asyncio.ensure_future(link.queue.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                message = get.result()
                if message is _CLOSE:
                    break
                yield message
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await self._orchestrator.disconnect(name, link)

    async def _read(self, name: str, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        try:
            await self._consume(name, requests)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.info("event=agent_stream_ended node=%s code=%s", name, exc.code().name)
        except Exception:
            log.exception("event=agent_stream_failed node=%s", name)

    async def _consume(self, name: str, requests: AsyncIterator[pb.ConnectRequest]) -> None:
        async for message in requests:
            kind = message.WhichOneof("message")
            if kind == "heartbeat":
                await self._orchestrator.heartbeat(name)
            elif kind == "container_status":
                await self._orchestrator.report(name, report_from_pb(message.container_status))
            elif kind == "log_batch":
                await self._logs.ingest(log_lines_from_pb(message.log_batch))
            else:
                log.warning("event=unexpected_agent_message node=%s kind=%s", name, kind)
