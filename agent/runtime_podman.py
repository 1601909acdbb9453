"""The :class:`~agent.runtime.Runtime` on a real Podman API socket (podman-py).

podman-py is blocking (HTTP over a unix socket), so every call runs in a
dedicated thread pool: the event loop never waits on Podman, and a slow stop
(several seconds) cannot starve the default executor that other code uses.
Each pool thread has its own ``PodmanClient`` because podman-py does not
promise thread safety.

Networking, create arguments and hardening (both network modes):
:mod:`agent.podman_create`. In host-port mode a worker's endpoints are
published on host ports the agent allocates from its port range, bound on the
publish address, and the addresses handed to jobs are
``<advertise address>:<host port>``.

Logs: :meth:`PodmanRuntime.follow_logs` reads the k8s-file log by offset,
else through the log API by time windows (:mod:`agent.podman_logs_reader`).
Host ports of host-port mode: :mod:`agent.podman_ports`. Pulls: libpod's
``POST /images/pull`` (:mod:`agent.podman_pull`). Podman's event feed:
:mod:`agent.podman_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from podman.errors import APIError, NotFound
from podman.errors import ImageNotFound as PodmanImageNotFound

from agent import probe as probing
from agent.logparts import DEFAULT_PART_BYTES
from agent.logutil import log
from agent.podman_attrs import image_summary, info_from_inspect, info_from_list
from agent.podman_client import ClientPool, abort_reply, explain
from agent.podman_create import (
    DEFAULT_LOG_MAX_SIZE,
    DEFAULT_PIDS_LIMIT,
    CreateSettings,
    check_limits,
    create_kwargs,
    ensure_network_sync,
)
from agent.podman_events import watch_events
from agent.podman_logs_reader import PodmanLogReader
from agent.podman_ports import HostPorts, default_publish_address, published_ports
from agent.podman_pull import pull_sync
from agent.podman_stop import force_remove_sync, remove_sync, stop_sync
from agent.runtime import (
    LABEL_NODE,
    LABEL_RUN_ID,
    ClusterScope,
    ContainerInfo,
    ContainerSpec,
    EndpointTarget,
    ImageNotFound,
    ImageSummary,
    LogLine,
    NetworkMode,
    ProgressCallback,
    PullProgress,
    RegistryAuth,
    RuntimeFailure,
)

DEFAULT_URL = "unix:///run/podman/podman.sock"
_T = TypeVar("_T")
_NAME_IN_USE = re.compile(r"name .* is already in use", re.I)
_ADDR_IN_USE = re.compile(r"address already in use|port is already allocated", re.I)
_log = logging.getLogger(__name__)


class PodmanRuntime:
    """Runs muster containers through the Podman REST API."""

    def __init__(
        self,
        *,
        node_name: str,
        url: str = DEFAULT_URL,
        network_name: str = "muster",
        network_mode: NetworkMode = "bridge",
        advertise_address: str = "127.0.0.1",
        publish_address: str | None = None,
        port_range: tuple[int, int] = (30000, 32767),
        stop_timeout: int = 2,
        max_threads: int = 16,
        log_threads: int = 32,
        log_settle: float = 0.5,
        log_poll: tuple[float, float] = (0.1, 2.0),
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        log_max_size: int = DEFAULT_LOG_MAX_SIZE,
        log_files: bool = True,
        log_file_poll: tuple[float, float] = (0.05, 0.5),
        log_part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        """Configure the runtime; nothing is contacted until the first call.

        ``publish_address`` is where host ports are bound in host-port mode;
        by default the advertise address when it belongs to this host, else
        all interfaces. ``pids_limit`` and ``log_max_size`` (bytes) apply to
        every run container (see :mod:`agent.podman_create`). The ``log_*`` settings
        go to :class:`agent.podman_logs_reader.PodmanLogReader` (``log_threads``:
        its pool; ``log_settle``, ``log_poll``, ``log_files``, ``log_file_poll``,
        ``log_part_bytes``: its ``settle``, ``poll``, ``files``, ``file_poll``
        and ``part_bytes``).
        """
        check_limits(pids_limit, log_max_size)
        self._node = node_name
        self._network = network_name
        self._mode: NetworkMode = network_mode
        self._advertise = advertise_address
        if publish_address is None:
            publish_address = default_publish_address(advertise_address)
        self._publish = publish_address
        self._stop_timeout = stop_timeout
        self._create_settings = CreateSettings(
            node_name, network_name, self._publish, stop_timeout, pids_limit, log_max_size
        )
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="podman")
        self._clients = ClientPool(url)
        self._logs = PodmanLogReader(
            self._client,
            threads=log_threads,
            settle=log_settle,
            poll=log_poll,
            files=log_files,
            file_poll=log_file_poll,
            part_bytes=log_part_bytes,
        )
        self._ports = HostPorts(port_range, self._publish or "0.0.0.0")
        self._network_ready = False
        self.cluster = ClusterScope()
        """Scopes list_managed to this node's cluster (set once Registered says it)."""

    # -- Runtime properties -------------------------------------------------

    @property
    def node_name(self) -> str:
        """Node name, stamped on every container as ``muster.node``."""
        return self._node

    @property
    def network_name(self) -> str:
        """Bridge network every run container joins."""
        return self._network

    @property
    def network_mode(self) -> NetworkMode:
        """``bridge`` or ``host-port``."""
        return self._mode

    @property
    def publish_address(self) -> str:
        """Host address host ports are bound on (``0.0.0.0`` = all)."""
        return self._publish

    @property
    def allocated_host_ports(self) -> frozenset[int]:
        """Host ports held in host-port mode: this node's containers' and those
        other containers on the host publish (as last seen)."""
        return self._ports.allocated

    @property
    def pids_limit(self) -> int:
        """The pids limit of every run container."""
        return self._create_settings.pids_limit

    @property
    def log_max_size(self) -> int:
        """The size cap (bytes) of every run container's log file."""
        return self._create_settings.log_max_size

    # -- plumbing ---------------------------------------------------------------

    def _client(self) -> Any:
        """The calling thread's ``PodmanClient``."""
        return self._clients.get()

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # -- Runtime methods ------------------------------------------------------

    async def ensure_network(self) -> None:
        """Create the bridge network with DNS if missing (races with other agents are fine)."""
        await self._call(self._ensure_network_sync)

    async def image_exists(self, image: str) -> bool:
        """Whether ``image`` is in local storage (never pulls)."""
        return await self._call(lambda: self._client().images.exists(image))

    async def image_digest(self, image: str) -> str | None:
        """The image's ``Digest`` (see :mod:`agent.podman_attrs`), ``None`` if absent."""
        return await self._call(self._image_digest_sync, image)

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        tls_verify: bool = True,
        progress: ProgressCallback | None = None,
        limit_seconds: float | None = None,
    ) -> str:
        """Pull ``image`` (:mod:`agent.podman_pull`); return its digest."""
        loop = asyncio.get_running_loop()

        def report(p: PullProgress) -> None:  # reader thread -> event loop
            if progress is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(progress, p)

        held: list[Any] = []  # the streaming reply, so a cancelled pull can cut it
        try:
            return await self._call(
                lambda: (
                    self._image_digest_sync(
                        pull_sync(
                            self._client(), image, auth, tls_verify, report, limit_seconds, held
                        )
                    )
                    or ""
                )
            )
        except asyncio.CancelledError:
            # The caller gave up (timeout, teardown): end the reading thread now
            # rather than at its read timeout.
            for response in held:
                abort_reply(response)
            raise

    async def list_images(self) -> list[ImageSummary]:
        """Every image in local storage (libpod image list)."""
        return await self._call(
            lambda: [image_summary(i.attrs) for i in self._client().images.list()]
        )

    async def start(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start ``spec`` (idempotent by name, never pulls)."""
        return await self._call(self._start_sync, spec)

    async def inspect(self, name: str) -> ContainerInfo | None:
        """Full detail of one container of this node, ``None`` if absent/foreign."""
        return await self._call(self._inspect_sync, name)

    async def watch_changes(self, notify: Callable[[], None]) -> None:
        """Podman's event stream (this node's containers), as change hints
        (:func:`agent.podman_events.watch_events`)."""
        await watch_events(self._clients.url, self._node, notify)

    async def list_managed(self) -> list[ContainerInfo]:
        """All containers of this node (one API call, no IPs)."""
        return await self._call(self._list_sync)

    async def remove_run(self, run_id: int) -> list[ContainerInfo]:
        """Stop (short timeout) and remove every container of ``run_id``, in parallel."""
        infos = [i for i in await self.list_managed() if i.run_id == run_id]
        results = await asyncio.gather(
            *(self._call(self._remove_sync, i.name) for i in infos), return_exceptions=True
        )
        for info, result in zip(infos, results, strict=True):
            if isinstance(result, BaseException):
                log(_log, logging.WARNING, "remove_failed", name=info.name, error=result)
            else:
                self._logs.forget(info.name)
        return [i for i, r in zip(infos, results, strict=True) if not isinstance(r, BaseException)]

    async def stop_run(self, run_id: int) -> None:
        """Stop (short timeout) every running container of ``run_id``, in parallel.

        Log readers of the run's containers then look again at once, instead
        of after their idle pause, so a teardown waits for them only briefly.
        """
        mine = [i for i in await self.list_managed() if i.run_id == run_id]
        running = [i for i in mine if i.state == "running"]
        results = await asyncio.gather(
            *(self._call(self._stop_sync, i.name) for i in running), return_exceptions=True
        )
        for info, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                log(_log, logging.WARNING, "stop_failed", name=info.name, error=result)
        for info in mine:
            self._logs.wake(info.name)

    async def follow_logs(self, name: str) -> AsyncIterator[list[LogLine]]:
        """Every line of ``name`` from the first (:mod:`agent.podman_logs_reader`)."""
        async with contextlib.aclosing(self._logs.follow(name)) as chunks:
            async for chunk in chunks:
                yield chunk

    def endpoint_targets(self, info: ContainerInfo) -> list[EndpointTarget]:
        """See :func:`agent.probe.endpoint_targets`."""
        return probing.endpoint_targets(info, self._mode, self._advertise, self._publish)

    async def probe(self, target: EndpointTarget) -> bool:
        """Non-blocking TCP connect to the target."""
        if target.probe_host is None:
            return False
        return await probing.tcp_accepts(target.probe_host, target.probe_port)

    async def close(self) -> None:
        """Close clients and the thread pools; containers keep running."""
        await self._logs.close()
        await asyncio.to_thread(self._executor.shutdown, True)
        self._clients.close()

    # -- blocking implementations (executor threads only) -------------------------

    def _ensure_network_sync(self) -> None:
        ensure_network_sync(self._client(), self._network)
        self._network_ready = True

    def _image_digest_sync(self, image: str) -> str | None:
        try:
            attrs = self._client().images.get(image).attrs
        except (NotFound, PodmanImageNotFound):  # podman-py's is no NotFound
            return None
        return str(attrs.get("Digest") or "")

    def _start_sync(self, spec: ContainerSpec) -> ContainerInfo:
        client = self._client()
        existing = self._get_sync(spec.name)
        if existing is not None:
            return self._adopt_existing_sync(existing)
        if not client.images.exists(spec.image):
            raise ImageNotFound(spec.image, self._node, "it was not pulled, or was removed since")
        if not self._network_ready:
            self._ensure_network_sync()
        publish = self._mode == "host-port" and spec.role == "worker" and bool(spec.endpoints)
        attempts = 3 if publish else 1
        for attempt in range(attempts):
            host_ports = self._allocate_ports(spec) if publish else {}
            try:
                # Owns ``host_ports`` from here: records or releases them.
                return self._create_and_start_sync(spec, host_ports)
            except _PortTaken:
                # Something else holds them: learn what every container publishes.
                self._reserve_published_sync()
                if attempt == attempts - 1:
                    raise RuntimeFailure(
                        f"could not publish endpoints of {spec.name}: host ports kept being taken"
                    ) from None
        raise AssertionError("unreachable")

    def _adopt_existing_sync(self, container: Any) -> ContainerInfo:
        """Idempotent start: leave an existing container, but start a never-started
        one. One that started before and was reset (a host reboot) is never
        started again: it is reported failed, with the reason."""
        info = info_from_inspect(container.attrs, self._node, self._network)
        fresh = info is not None and info.state == "creating"
        if fresh and container.attrs.get("State", {}).get("Status") in ("created", "configured"):
            try:
                container.start()
            except APIError as exc:
                raise RuntimeFailure(f"start {container.name}: {explain(exc)}") from exc
            container.reload()
        info = info_from_inspect(container.attrs, self._node, self._network)
        if info is None:
            raise RuntimeFailure(
                f"a container named {container.name} exists but is not managed by node "
                f"'{self._node}'"
            )
        return info

    def _allocate_ports(self, spec: ContainerSpec) -> dict[str, int]:
        if not self._ports.synced:
            self._list_sync()  # reserve ports of containers that existed before this agent
            self._reserve_published_sync()  # and of every other container on the host
        try:
            return self._ports.allocate(spec.endpoints)
        except Exception as exc:
            raise RuntimeFailure(str(exc)) from exc

    def _create_and_start_sync(
        self, spec: ContainerSpec, host_ports: dict[str, int]
    ) -> ContainerInfo:
        kwargs = create_kwargs(spec, host_ports, self._create_settings)
        try:
            try:
                container = self._create_sync(spec.image, kwargs)
            except APIError as exc:
                # Created concurrently (another start of the same name). Podman 4.3
                # answers 500 "... name ... is already in use" rather than 409.
                if exc.status_code == 409 or _NAME_IN_USE.search(explain(exc)):
                    existing = self._get_sync(spec.name)
                    if existing is not None:
                        self._ports.release(host_ports.values())  # it has its own
                        host_ports = {}
                        info = self._adopt_existing_sync(existing)
                        self._ports.record(info.name, info.host_ports.values())
                        return info
                raise RuntimeFailure(f"create {spec.name}: {explain(exc)}") from exc
        except BaseException:
            self._ports.release(host_ports.values())  # nothing was created
            raise
        try:
            info = self._start_created_sync(container, spec, publishes=bool(host_ports))
        except BaseException:
            # Leave nothing behind so the start can be retried cleanly; the
            # ports are free again only once the container is really gone.
            if force_remove_sync(container):
                self._ports.release(host_ports.values())
            else:
                self._ports.record(spec.name, host_ports.values())
            raise
        self._ports.record(spec.name, host_ports.values())
        return info

    def _create_sync(self, image: str, kwargs: dict[str, Any]) -> Any:
        client = self._client()
        try:
            return client.containers.create(image, **kwargs)
        except APIError as exc:
            if "network not found" not in explain(exc).lower():
                raise
            # Someone removed the network under a running agent: recreate, retry once.
            self._ensure_network_sync()
            return client.containers.create(image, **kwargs)

    def _start_created_sync(
        self, container: Any, spec: ContainerSpec, *, publishes: bool
    ) -> ContainerInfo:
        try:
            container.start()
        except APIError as exc:
            if publishes and _ADDR_IN_USE.search(explain(exc)):
                raise _PortTaken() from exc
            raise RuntimeFailure(f"start {spec.name}: {explain(exc)}") from exc
        container.reload()
        info = info_from_inspect(container.attrs, self._node, self._network)
        if info is None:
            raise RuntimeFailure(f"start {spec.name}: created container lost its labels")
        return info

    def _reserve_published_sync(self) -> None:
        """Reserve the host ports every container on the host publishes (any node, any owner)."""
        try:
            containers = self._client().containers.list(all=True)
        except Exception as exc:  # best effort: the free-port check still applies
            log(_log, logging.WARNING, "port_scan_failed", error=explain(exc))
            return
        self._ports.published_elsewhere(published_ports(c.attrs for c in containers))

    def _get_sync(self, name: str) -> Any | None:
        try:
            return self._client().containers.get(name)
        except NotFound:
            return None

    def _inspect_sync(self, name: str) -> ContainerInfo | None:
        container = self._get_sync(name)
        return (
            None
            if container is None
            else info_from_inspect(container.attrs, self._node, self._network)
        )

    def _list_sync(self) -> list[ContainerInfo]:
        before = self._ports.names()
        containers = self._client().containers.list(
            all=True,
            # List form: podman-py stringifies list values inside a dict filter.
            filters=[f"label={LABEL_RUN_ID}", f"label={LABEL_NODE}={self._node}"],
        )
        infos = [i for c in containers if (i := info_from_list(c.attrs)) is not None]
        self._ports.sync(infos, before)  # every container of the node holds its ports
        return self.cluster.keep(infos)

    def _stop_sync(self, name: str) -> Any | None:
        """Stop ``name`` if it runs; return the container (``None`` if absent)."""
        container = self._get_sync(name)
        if container is not None:
            stop_sync(container, self._stop_timeout)
        return container

    def _remove_sync(self, name: str) -> None:
        container = self._stop_sync(name)
        if container is None:
            return
        remove_sync(container)
        self._ports.forget(name)


class _PortTaken(Exception):
    """A host port was grabbed between allocation and container start."""
