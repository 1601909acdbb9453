"""A deterministic in-memory :class:`~agent.runtime.Runtime` for tests and simulations.

No Podman, no sockets, no threads: state changes only when the agent calls the
runtime or when a test scripts one, so tests assert exact message sequences.
It is importable on its own (stdlib, ``agent.runtime``, ``agent.probe`` and
``agent.runtime_fake_images``) so control-plane tests can drive real agents
over fake containers.

Scripting (all synchronous, call from the test). Images and pulls from the
simulated registry: :mod:`agent.runtime_fake_images` (``add_image``,
``remove_image``, ``publish``, ``require_credentials``, ``hold_pulls``,
``fail_next_pull``, ``pull_counts``...). Containers:

* ``fail_next_start(name, message)``: the next ``start`` of ``name`` fails.
* ``fail_next_remove(name, times=1)``: the next ``times`` removals of ``name``
  fail (``remove_run`` leaves it in place and leaves it out of its result,
  like the Podman runtime when one removal fails).
* ``hold_endpoints = True``: new containers' endpoints do not accept until
  ``open_endpoint(name, endpoint)``; ``close_endpoint`` closes one again.
* ``exit(name, code)``, ``kill(name)`` (exit 137), ``vanish(name)`` (removed
  behind the agent's back), ``exit_on_start[name] = code``.
* ``add_existing(spec, state=..., exit_code=...)``: a container that was
  already there (e.g. before an agent restart).
* ``write_log(name, stream, text)``: the container writes ``text`` to ``stream``
  (newlines end lines; a rest without newline is completed by a later write,
  or becomes a line of its own when the container stops). ``follow_logs``
  yields lines in chunks of at most ``log_chunk_lines`` and ends once the
  container stopped and every line was yielded, or when it is removed.

Mounts: ``mounts(name)`` is what Podman would bind-mount into the container
(the host directory of a job's buffer FIFOs at ``PIPE_DIR``); the fake mounts
nothing, so a test plays the job by opening those FIFOs itself.

Counters (``create_count``, ``probe_count``, ``list_count``, ``started_names``,
``log_follows``) let tests prove that restarts never duplicate containers and
that polling or probing has stopped.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from agent import probe as probing
from agent.runtime import (
    ClusterScope,
    ContainerInfo,
    ContainerSpec,
    EndpointTarget,
    ImageNotFound,
    LogLine,
    LogStreamName,
    NetworkMode,
    RuntimeFailure,
    State,
)
from agent.runtime_fake_images import FakeImages, FakePull, fake_digest
from muster.common.pipes import PIPE_DIR

__all__ = ["FakeContainer", "FakePull", "FakeRuntime", "fake_digest"]


@dataclass
class FakeContainer:
    """One fake container and its scripted endpoint state."""

    spec: ContainerSpec
    state: State
    exit_code: int | None = None
    ip: str = ""
    host_ports: dict[str, int] = field(default_factory=dict)
    open_endpoints: set[str] = field(default_factory=set)
    logs: list[LogLine] = field(default_factory=list)
    """Complete lines written so far, both streams, in writing order."""
    partial: dict[LogStreamName, tuple[int, str]] = field(default_factory=dict)
    """Per stream: time and text of a line still waiting for its newline."""
    image_digest: str = ""


class FakeRuntime(FakeImages):
    """In-memory runtime; see the module docstring for the scripting API."""

    def __init__(
        self,
        *,
        node_name: str = "fake-node",
        network_name: str = "muster",
        network_mode: NetworkMode = "bridge",
        advertise_address: str = "127.0.0.1",
        port_range: tuple[int, int] = (30000, 32767),
        all_images_exist: bool = True,
    ) -> None:
        """Create an empty fake node."""
        super().__init__(all_images_exist=all_images_exist)
        self._node = node_name
        self._network = network_name
        self._mode: NetworkMode = network_mode
        self._advertise = advertise_address
        self._ports = itertools.count(port_range[0])
        self._ips = itertools.count(2)
        self.containers: dict[str, FakeContainer] = {}
        self.cluster = ClusterScope()
        self.hold_endpoints = False
        self.exit_on_start: dict[str, int] = {}
        self._fail_next: dict[str, str] = {}
        self._fail_remove: dict[str, int] = {}
        self.remove_calls = 0
        """How many times ``remove_run`` was called."""
        self.network_created = False
        self.create_count = 0
        self.probe_count = 0
        self.list_count = 0
        self.started_names: list[str] = []
        self.closed = False
        self.announce_changes = True
        """Whether external changes are announced (False: found by polling only)."""
        self._watchers: list[Callable[[], None]] = []
        self.log_chunk_lines = 1000
        self.log_follows: list[str] = []
        """Names passed to ``follow_logs``, in call order."""
        self._log_event = asyncio.Event()

    # -- Runtime properties -------------------------------------------------------

    @property
    def node_name(self) -> str:
        """Node name."""
        return self._node

    @property
    def network_name(self) -> str:
        """Network name (only recorded)."""
        return self._network

    @property
    def network_mode(self) -> NetworkMode:
        """Network mode, which decides endpoint addresses."""
        return self._mode

    # -- scripting ------------------------------------------------------------------

    def fail_next_start(self, name: str, message: str) -> None:
        """The next ``start(name)`` raises :class:`RuntimeFailure` with ``message``."""
        self._fail_next[name] = message

    def fail_next_remove(self, name: str, times: int = 1) -> None:
        """The next ``times`` removals of ``name`` fail (it stays)."""
        self._fail_remove[name] = times

    def open_endpoint(self, name: str, endpoint: str) -> None:
        """Let ``endpoint`` of container ``name`` accept connections."""
        self.containers[name].open_endpoints.add(endpoint)

    def close_endpoint(self, name: str, endpoint: str) -> None:
        """Make ``endpoint`` of container ``name`` refuse connections."""
        self.containers[name].open_endpoints.discard(endpoint)

    def exit(self, name: str, code: int) -> None:
        """The container's process exits with ``code`` (a pending partial line ends)."""
        container = self.containers[name]
        for stream, (time_ns, text) in container.partial.items():
            container.logs.append(LogLine(stream, time_ns, text))
        container.partial.clear()
        container.state, container.exit_code = "exited", code
        container.open_endpoints.clear()
        self._logs_changed()
        self._announce()

    def kill(self, name: str) -> None:
        """Kill the container externally (SIGKILL: exit code 137)."""
        self.exit(name, 137)

    def vanish(self, name: str) -> None:
        """Remove the container behind the agent's back."""
        self.containers.pop(name, None)
        self._logs_changed()
        self._announce()

    def _announce(self) -> None:
        """Tell whoever watches changes (as Podman's event stream would)."""
        if self.announce_changes:
            for notify in list(self._watchers):
                notify()

    async def watch_changes(self, notify: Callable[[], None]) -> None:
        """Announce external changes (exit, kill, vanish) until cancelled."""
        self._watchers.append(notify)
        try:
            await asyncio.Event().wait()
        finally:
            self._watchers.remove(notify)

    def write_log(
        self, name: str, stream: LogStreamName, text: str, *, time_ns: int | None = None
    ) -> None:
        """Container ``name`` writes ``text`` to ``stream`` (at ``time_ns``, default now)."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        container = self.containers[name]
        now = time.time_ns() if time_ns is None else time_ns
        started, pending = container.partial.pop(stream, (now, ""))
        *complete, rest = (pending + text).split("\n")
        for i, line in enumerate(complete):
            container.logs.append(LogLine(stream, started if i == 0 else now, line))
        if rest:
            container.partial[stream] = (started if not complete else now, rest)
        self._logs_changed()

    def log_lines(self, name: str) -> list[LogLine]:
        """The complete lines ``name`` has written so far."""
        return list(self.containers[name].logs)

    def add_existing(
        self, spec: ContainerSpec, state: State = "running", exit_code: int | None = None
    ) -> FakeContainer:
        """Register a container that exists before the agent looks (endpoints open)."""
        container = self._new(spec)
        container.state, container.exit_code = state, exit_code
        container.image_digest = self.local_digests.get(spec.image) or fake_digest(spec.image)
        if state == "running":
            container.open_endpoints = set(spec.endpoints)
        self.containers[spec.name] = container
        return container

    # -- Runtime methods --------------------------------------------------------------

    async def ensure_network(self) -> None:
        """Record that the network exists."""
        self.network_created = True

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        """Idempotent by name; scripted failures and exits apply."""
        existing = self.containers.get(spec.name)
        if existing is not None:
            if existing.state == "creating":
                existing.state = "running"
            return self._info(existing)
        if not await self.image_exists(spec.image):
            raise ImageNotFound(spec.image, self._node)
        if spec.name in self._fail_next:
            raise RuntimeFailure(self._fail_next.pop(spec.name))
        container = self._new(spec)
        container.state = "running"
        container.image_digest = await self.image_digest(spec.image) or ""
        if not self.hold_endpoints:
            container.open_endpoints = set(spec.endpoints)
        self.containers[spec.name] = container
        self.create_count += 1
        self.started_names.append(spec.name)
        if spec.name in self.exit_on_start:
            self.exit(spec.name, self.exit_on_start[spec.name])
        return self._info(container)

    def mounts(self, name: str) -> dict[str, str]:
        """Container path -> host path of what ``name`` would have mounted."""
        spec = self.containers[name].spec
        return {PIPE_DIR: spec.pipe_dir} if spec.pipe_dir else {}

    async def inspect(self, name: str) -> ContainerInfo | None:
        """Current info of ``name`` or ``None``."""
        container = self.containers.get(name)
        return None if container is None else self._info(container)

    async def list_managed(self) -> list[ContainerInfo]:
        """Every fake container of the node's cluster (see ClusterScope), in creation order."""
        self.list_count += 1
        return self.cluster.keep([self._info(c) for c in self.containers.values()])

    async def stop_run(self, run_id: int) -> None:
        """Running containers of ``run_id`` exit with 143 (SIGTERM)."""
        for name, container in list(self.containers.items()):
            if container.spec.run_id == run_id and container.state == "running":
                if self._in_scope(container):
                    self.exit(name, 143)

    async def follow_logs(self, name: str) -> AsyncIterator[list[LogLine]]:
        """Lines of ``name`` from the first; ends once it stopped and all were yielded."""
        self.log_follows.append(name)
        container = self.containers.get(name)
        if container is None:
            return
        sent = 0
        while self.containers.get(name) is container:
            if sent < len(container.logs):
                chunk = container.logs[sent : sent + self.log_chunk_lines]
                sent += len(chunk)
                yield chunk
                continue
            if container.state not in ("running", "creating"):
                return
            await self._log_event.wait()

    async def remove_run(self, run_id: int) -> list[ContainerInfo]:
        """Drop every container of ``run_id`` except scripted failures; return the dropped."""
        self.remove_calls += 1
        removed: list[FakeContainer] = []
        mine = [c for c in self.containers.values() if c.spec.run_id == run_id]
        for container in [c for c in mine if self._in_scope(c)]:
            name = container.spec.name
            failures = self._fail_remove.get(name, 0)
            if failures > 0:
                self._fail_remove[name] = failures - 1
                continue
            del self.containers[name]
            removed.append(container)
        self._logs_changed()
        return [self._info(c) for c in removed]

    def endpoint_targets(self, info: ContainerInfo) -> list[EndpointTarget]:
        """Same address rules as the Podman runtime."""
        return probing.endpoint_targets(info, self._mode, self._advertise, "0.0.0.0")

    async def probe(self, target: EndpointTarget) -> bool:
        """Scripted: an endpoint accepts iff its container runs and it is open."""
        self.probe_count += 1
        for container in self.containers.values():
            if self._matches(container, target):
                return container.state == "running" and target.name in container.open_endpoints
        return False

    async def close(self) -> None:
        """Nothing to release; recorded for tests."""
        self.closed = True

    # -- helpers ----------------------------------------------------------------------

    def _logs_changed(self) -> None:
        """Wake every ``follow_logs`` waiting for output or for the end."""
        event, self._log_event = self._log_event, asyncio.Event()
        event.set()

    def _new(self, spec: ContainerSpec) -> FakeContainer:
        n = next(self._ips)
        container = FakeContainer(
            spec=replace(spec), state="creating", ip=f"10.99.{n // 250}.{n % 250 + 2}"
        )
        if self._mode == "host-port" and spec.role == "worker":
            container.host_ports = {name: next(self._ports) for name in spec.endpoints}
        return container

    def _in_scope(self, container: FakeContainer) -> bool:
        """Whether the node's cluster scope covers ``container`` (as list_managed does)."""
        return self.cluster.admits(container.spec.name, container.spec.cluster_id)

    def _matches(self, container: FakeContainer, target: EndpointTarget) -> bool:
        if self._mode == "bridge":
            return container.ip == target.probe_host and target.name in container.spec.endpoints
        return container.host_ports.get(target.name) == target.probe_port

    def _info(self, container: FakeContainer) -> ContainerInfo:
        spec = container.spec
        return ContainerInfo(
            name=spec.name,
            run_id=spec.run_id,
            role=spec.role,
            replica=spec.replica,
            state=container.state,
            exit_code=container.exit_code if container.state == "exited" else None,
            hostname=spec.hostname,
            ip=container.ip,
            host_ports=dict(container.host_ports),
            endpoints=dict(spec.endpoints),
            generation=spec.generation,
            image_digest=container.image_digest,
            cluster_id=spec.cluster_id,
        )
