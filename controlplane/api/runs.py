"""RunService servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from controlplane.api.buffers import data_plane_errors
from controlplane.api.convert import (
    STATUS_TO_PB,
    check_timestamp,
    from_timestamp,
    log_lines_response,
    run_message,
    run_request_from_pb,
    statuses_from_pb,
)
from controlplane.api.convert_watch import WatchDeltas
from controlplane.api.errors import grpc_errors
from controlplane.core.errors import InvalidArgument
from controlplane.services.logs import LogService
from controlplane.services.orchestrator import Orchestrator
from controlplane.services.run_requests import validate_request_id
from controlplane.services.runs import RunQueries
from controlplane.services.streams import StreamLimits
from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc


def _run_id(value: int) -> int:
    if value <= 0:
        raise InvalidArgument("run_id", "run ids are positive integers")
    return value


MAX_TIME_NS = 2**63 - 1


class RunServicer(pb_grpc.RunServiceServicer):
    """Translates RunService calls to the orchestrator and the run queries."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        runs: RunQueries,
        logs: LogService,
        streams: StreamLimits | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._runs = runs
        self._logs = logs
        self._streams = streams or StreamLimits()
        """Caps on WatchRun and GetRunLogs streams, in all and per run."""

    @grpc_errors
    @data_plane_errors  # making a run's buffers needs the data plane
    async def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateRunResponse:
        if not request.HasField("run") or not request.run.HasField("job"):
            raise InvalidArgument("job", "a run needs a job")
        request_id = validate_request_id(request.request_id)
        wanted = replace(run_request_from_pb(request.run), request_id=request_id)
        run = await self._orchestrator.create_run(wanted)
        return pb.CreateRunResponse(run=run_message(run))

    @grpc_errors
    async def GetRun(
        self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRunResponse:
        run = await self._orchestrator.get_run(_run_id(request.run_id))
        return pb.GetRunResponse(run=run_message(run))

    @grpc_errors
    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        runs, token = await self._runs.list(
            statuses=statuses_from_pb(request.statuses),
            tags=dict(request.tags),
            since=from_timestamp(request.since, "since") if request.HasField("since") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(
            runs=[run_message(r, with_events=False) for r in runs], next_page_token=token
        )

    @grpc_errors
    async def CountRuns(
        self, request: pb.CountRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountRunsResponse:
        since = from_timestamp(request.since, "since") if request.HasField("since") else None
        counts = await self._runs.count(tags=dict(request.tags), since=since)
        ordered = sorted(counts.items(), key=lambda kv: int(STATUS_TO_PB[kv[0]]))
        return pb.CountRunsResponse(
            counts=[pb.RunStatusCount(status=STATUS_TO_PB[s], count=n) for s, n in ordered],
            total=sum(counts.values()),
        )

    @grpc_errors
    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        run_id = _run_id(request.run_id)
        deltas = WatchDeltas() if request.changes_only else None
        with self._streams.stream(run_id):
            async for run in self._orchestrator.watch(run_id):
                if deltas is None:
                    yield pb.WatchRunResponse(run=run_message(run))
                else:
                    yield deltas.response(run)

    @grpc_errors
    async def GetRunLogs(
        self, request: pb.GetRunLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetRunLogsResponse]:
        run = await self._orchestrator.get_run(_run_id(request.run_id))
        single_job = run.job.replicas == 1
        since = None
        if request.HasField("since"):
            check_timestamp(request.since, "since")
            since = min(
                request.since.seconds * 1_000_000_000 + request.since.nanos, MAX_TIME_NS
            )  # nanoseconds fit in 64 bits until 2262; a later `since` matches nothing
        with self._streams.stream(run.id):
            async for chunk, resume_after in self._logs.read(
                run.id,
                follow=request.follow,
                since_ns=since,
                tail=request.tail,
                resume_after=request.resume_after,
            ):
                yield log_lines_response(chunk, single_job, resume_after)

    @grpc_errors
    async def UpdateRunTags(
        self, request: pb.UpdateRunTagsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateRunTagsResponse:
        run = await self._orchestrator.update_run_tags(
            _run_id(request.run_id), dict(request.tags), request.clear_tags, request.etag
        )
        return pb.UpdateRunTagsResponse(run=run_message(run))

    @grpc_errors
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        run = await self._orchestrator.cancel_run(_run_id(request.run_id))
        return pb.CancelRunResponse(run=run_message(run))
