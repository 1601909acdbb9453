"""The control plane's Prometheus metrics (`--metrics-listen`).

What an operator needs to see that the control plane keeps up: RPC latency by
method, store call latency by method, how long runs wait to be placed and to
have their job released, runs by status, the pending queue, connected agents,
log lines ingested. Gauges are read from the orchestrator when scraped (no
bookkeeping on the hot path); latencies come from an interceptor, a timing
proxy around the store and a commit listener, so the services stay unaware.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.api.agent_traffic import AgentTraffic
from controlplane.api.auth import Continuation, Handler, behavior_of, same_shape
from controlplane.core.runs import Run
from controlplane.services.orchestrator import Orchestrator
from controlplane.store.base import Store
from muster.common.metrics import LATENCY_BUCKETS, TimedProxy

RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)


class ControlPlaneMetrics:
    """One control plane's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc = Histogram(
            "muster_rpc_duration_seconds",
            "Unary RPC latency by method and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store = Histogram(
            "muster_store_call_duration_seconds",
            "Store call latency (a transaction or a query) by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.log_lines = Counter(
            "muster_log_lines_ingested", "Log lines stored.", registry=self.registry
        )
        self.scheduling = Histogram(
            "muster_run_scheduling_seconds",
            "From a run's creation to its placement.",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.release = Histogram(
            "muster_run_release_seconds",
            "From a run's creation to its job's release (every worker ready).",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "muster_runs_finished",
            "Runs that ended, by status.",
            ["status"],
            registry=self.registry,
        )

    def timed_store(self, store: Store) -> Store:
        """`store`, with every call timed and stored log lines counted."""

        def observe(method: str, args: tuple, kwargs: dict) -> None:
            if method == "append_logs" and args:
                self.log_lines.inc(len(args[0]))

        return TimedProxy(store, self.store, observe=observe)

    def count_traffic(self, traffic: AgentTraffic) -> None:
        """Read the agents' message counts at each scrape."""
        self.registry.register(_TrafficCollector(traffic))

    def watch(self, orchestrator: Orchestrator) -> None:
        """Read gauges from `orchestrator` at each scrape; observe its commits."""
        self.registry.register(_OrchestratorCollector(orchestrator))
        orchestrator.add_listener(self.committed)

    def committed(self, before: Run | None, after: Run) -> None:
        """A run change was stored: placement, release and ends are observed once."""
        if after.placed_at and (before is None or before.placed_at is None):
            self.scheduling.observe((after.placed_at - after.created_at).total_seconds())
        if after.started_at and (before is None or before.started_at is None):
            self.release.observe((after.started_at - after.created_at).total_seconds())
        if after.terminal and (before is None or not before.terminal):
            self.finished.labels(status=after.status).inc()


class _TrafficCollector(Collector):
    def __init__(self, traffic: AgentTraffic) -> None:
        self._traffic = traffic

    def collect(self) -> Iterable[CounterMetricFamily]:
        t = self._traffic
        for direction, counts in (("received", t.received), ("sent", t.sent)):
            family = CounterMetricFamily(
                f"muster_agent_messages_{direction}",
                f"Messages {direction} on agents' streams, by kind.",
                labels=["kind"],
            )
            for kind, count in sorted(counts.items()):
                family.add_metric([kind], count)
            yield family
        yield CounterMetricFamily(
            "muster_agent_container_statuses",
            "Container states received from agents (batched or not).",
            value=t.statuses,
        )
        yield CounterMetricFamily(
            "muster_agent_container_starts", "Container starts sent to agents.", value=t.starts
        )


class _OrchestratorCollector(Collector):
    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self._orchestrator.active_counts()
        runs = GaugeMetricFamily("muster_runs_active", "Active runs by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily(
            "muster_runs_pending", "Runs waiting to be placed.", value=counts.get("Pending", 0)
        )
        nodes = GaugeMetricFamily("muster_nodes", "Known nodes by status.", labels=["status"])
        by_status: dict[str, int] = {}
        for node, _, _ in self._orchestrator.nodes():
            by_status[node.status] = by_status.get(node.status, 0) + 1
        for status, count in sorted(by_status.items()):
            nodes.add_metric([status], count)
        yield nodes
        yield GaugeMetricFamily(
            "muster_agents_connected",
            "Agents with an open stream.",
            value=self._orchestrator.connected_count(),
        )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every unary call (streams last as long as their callers want)."""

    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        self._rpc = metrics.rpc

    async def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not (handler.unary_unary or handler.stream_unary):
            return handler
        behavior, method, rpc = behavior_of(handler), details.method.rsplit("/", 1)[-1], self._rpc

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began, code = time.perf_counter(), "OK"
            try:
                return await behavior(request, context)
            except BaseException:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                if code == "OK":
                    code = _code_name(context, "OK")
                rpc.labels(method=method, code=code).observe(time.perf_counter() - began)

        return same_shape(handler, unary, behavior)


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default
