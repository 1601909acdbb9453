"""The agent's Prometheus metrics (`--metrics-listen`): containers by state,
how long each runtime (Podman) call takes, readiness probe latency (the
runtime's `probe`), and log batches shipped. The runtime is wrapped in a
timing proxy, so neither the supervisor nor the Podman adapter knows."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.runtime import Runtime
from muster.common.metrics import LATENCY_BUCKETS, TimedProxy


class AgentMetrics:
    """One agent's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runtime_calls = Histogram(
            "muster_agent_runtime_call_duration_seconds",
            "Container runtime (Podman API) call latency by method; method=probe is a "
            "readiness probe of one endpoint.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def timed_runtime(self, runtime: Runtime) -> Runtime:
        """`runtime`, with every coroutine call timed (log follows and change
        feeds are long-lived iterators or waits, and are left alone)."""
        quick = frozenset(
            {
                "ensure_network",
                "image_exists",
                "image_digest",
                "pull",
                "list_images",
                "start",
                "inspect",
                "list_managed",
                "stop_run",
                "remove_run",
                "probe",
            }
        )
        return TimedProxy(runtime, self.runtime_calls, methods=quick)

    def watch(self, states: Callable[[], dict[str, int]]) -> None:
        """Read containers by state from `states()` at each scrape."""
        self.registry.register(_StatesCollector(states))


class _StatesCollector(Collector):
    def __init__(self, states: Callable[[], dict[str, int]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "muster_agent_containers", "Managed containers by state.", labels=["state"]
        )
        for state, count in sorted(self._states().items()):
            family.add_metric([state], count)
        yield family
