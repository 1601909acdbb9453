"""The :class:`~agent.runtime.Runtime` on a real Podman API socket (podman-py).

podman-py is blocking (HTTP over a unix socket), so every call runs in a
dedicated thread pool: the event loop never waits on Podman, and a slow stop
(several seconds) cannot starve the default executor that other code uses.
Each pool thread has its own ``PodmanClient`` because podman-py does not
promise thread safety.

Networking (both modes): every run container joins the agent's bridge network
(created with DNS on if missing), so a job container can always reach a worker
on the same node by its hostname, which is also its network alias. In
host-port mode a worker's endpoints are additionally published on host ports
the agent allocates from its port range, bound on the publish address, and the
addresses handed to jobs are ``<advertise address>:<host port>``.

Logs: :meth:`PodmanRuntime.follow_logs` reads the k8s-file log by offset,
else through the log API by time windows (:mod:`agent.podman_logs_reader`).
Host ports of host-port mode: :mod:`agent.podman_ports`. Pulls: libpod's
``POST /images/pull`` (:mod:`agent.podman_pull`). Podman's event feed:
:mod:`agent.podman_events`.

Hardening: every run container is created with no-new-privileges, a pids
limit, Podman's default capability set minus NET_RAW, and a size cap on its
k8s-file log. podman-py's ``security_opt`` is *not* the way to the first: it
sends the list as SELinux label options, which Podman ignores without SELinux
(the container then runs with ``NoNewPrivs: 0``), so the runtime sets the
specgen field ``no_new_privileges`` instead. The log cap is enforced by
conmon: a write that would take the file past the cap first replaces it with
an empty file. How the log readers
meet that: :mod:`agent.podman_logs_reader`.

Digests: a status carries the container's ``ImageDigest``, which is the
image's ``Digest``: the digest of the manifest the image was first stored
under. For an image pulled from a registry onto a node that did not have it,
that is the registry's manifest digest (what ``podman push --digestfile``
prints). ``RepoDigests`` cannot do better: Podman lists every manifest digest
of an image under every one of its names, so when the same image (same id)
was stored earlier from another manifest (built here, then pushed, which
re-encodes the manifest), the registry's digest cannot be told apart there.

GPUs: a replica's CDI device names (``nvidia.com/gpu=0``) go through
podman-py's ``devices``, which sends each as a specgen device path. Podman
4.3 takes a qualified CDI name there for a CDI device and, when the
container starts, applies that device's edits from the specs in
``/etc/cdi`` and ``/var/run/cdi`` (its device nodes, variables, mounts); a
name no spec defines fails the start ("unresolvable CDI devices").
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

import psutil
from podman.errors import APIError, NotFound
from podman.errors import ImageNotFound as PodmanImageNotFound

from agent import probe as probing
from agent.logparts import DEFAULT_PART_BYTES
from agent.logutil import log
from agent.podman_attrs import image_summary, info_from_inspect, info_from_list
from agent.podman_client import ClientPool, abort_reply, explain
from agent.podman_events import watch_events
from agent.podman_logs_reader import PodmanLogReader
from agent.podman_ports import HostPorts, published_ports
from agent.podman_pull import pull_sync
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
    container_labels,
)
from muster.common.pipes import PIPE_DIR

DEFAULT_URL = "unix:///run/podman/podman.sock"
CPU_PERIOD_US = 100_000
_T = TypeVar("_T")
_NAME_IN_USE = re.compile(r"name .* is already in use", re.I)
_ADDR_IN_USE = re.compile(r"address already in use|port is already allocated", re.I)
DEFAULT_PIDS_LIMIT = 4096
"""Processes (threads count too) one run container may have at once."""
DEFAULT_LOG_MAX_SIZE = 100 * 2**20
"""Bytes a run container's log file may grow to before conmon truncates it."""
MIN_LOG_MAX_SIZE = 16 * 2**10
"""Smallest accepted log cap: more than one conmon write (8 KiB plus framing)."""
DROPPED_CAPABILITIES = ("CAP_NET_RAW",)
"""Dropped from Podman's default capability set (raw sockets: spoofing, sniffing)."""
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
        every run container (see the module docstring). The ``log_*`` settings
        go to :class:`agent.podman_logs_reader.PodmanLogReader` (``log_threads``:
        its pool; ``log_settle``, ``log_poll``, ``log_files``, ``log_file_poll``,
        ``log_part_bytes``: its ``settle``, ``poll``, ``files``, ``file_poll``
        and ``part_bytes``).
        """
        _check_limits(pids_limit, log_max_size)
        self._pids_limit = pids_limit
        self._log_max_size = log_max_size
        self._node = node_name
        self._network = network_name
        self._mode: NetworkMode = network_mode
        self._advertise = advertise_address
        self._publish = (
            publish_address if publish_address is not None else _default_publish(advertise_address)
        )
        self._stop_timeout = stop_timeout
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
    def pids_limit(self) -> int:
        """The pids limit of every run container."""
        return self._pids_limit

    @property
    def log_max_size(self) -> int:
        """The size cap (bytes) of every run container's log file."""
        return self._log_max_size

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
        """The image's ``Digest`` (see the module docstring), ``None`` if absent."""
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
        client = self._client()
        if client.networks.exists(self._network):
            attrs = client.networks.get(self._network).attrs
            if not attrs.get("dns_enabled", True):
                log(
                    _log,
                    logging.WARNING,
                    "network_without_dns",
                    network=self._network,
                    hint="workers will not resolve by hostname; use a network created by the agent",
                )
        else:
            try:
                client.networks.create(
                    self._network,
                    driver="bridge",
                    dns_enabled=True,
                    labels={"muster.managed": "true"},
                )
                log(_log, logging.INFO, "network_created", network=self._network)
            except APIError as exc:
                if exc.status_code != 409:  # 409: another agent created it first
                    raise RuntimeFailure(
                        f"cannot create network '{self._network}': {explain(exc)}"
                    ) from exc
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
        kwargs = self._create_kwargs(spec, host_ports)
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
            if self._force_remove_sync(container):
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

    def _create_kwargs(self, spec: ContainerSpec, host_ports: dict[str, int]) -> dict[str, Any]:
        """podman-py's ``containers.create`` arguments for ``spec``."""
        kwargs: dict[str, Any] = {
            "name": spec.name,
            "hostname": spec.hostname,
            "labels": container_labels(spec, self._node),
            "environment": dict(spec.env),
            "init": True,
            "stop_timeout": self._stop_timeout,
            "networks": {self._network: {"aliases": [spec.hostname]}},
            # The log reading (see the module docstring) is built and tested on
            # k8s-file; journald, the default on systemd hosts, rate-limits.
            # ``size`` goes to Podman as bytes (conmon's --log-size-max).
            "log_config": {"Type": "k8s-file", "Config": {"size": self._log_max_size}},
            # Hardening (module docstring). Not security_opt=["no-new-privileges"]:
            # podman-py sends that as SELinux options and Podman drops it.
            "no_new_privileges": True,
            "cap_drop": list(DROPPED_CAPABILITIES),
            "pids_limit": self._pids_limit,
        }
        if spec.command:
            kwargs["entrypoint"] = list(spec.command)
        if spec.args:
            kwargs["command"] = list(spec.args)
        if spec.working_dir:
            kwargs["working_dir"] = spec.working_dir
        if spec.hosts:
            # Worker names resolve from /etc/hosts, not only through
            # aardvark-dns (which stalls under churn) or across hosts at all.
            kwargs["extra_hosts"] = dict(spec.hosts)
        if spec.pipe_dir:
            # The job's buffer FIFOs (agent.buffer_copies); "z" lets a container
            # open them on an SELinux host (Podman ignores it elsewhere).
            kwargs["mounts"] = [
                {"type": "bind", "source": spec.pipe_dir, "target": PIPE_DIR, "relabel": "z"}
            ]
        if spec.gpu_devices:
            # CDI names go to Podman as devices; Podman resolves them through the
            # CDI specs in /etc/cdi and /var/run/cdi (device nodes, variables).
            kwargs["devices"] = list(spec.gpu_devices)
        if spec.cpu_limit_millis > 0:
            # podman-py ignores nano_cpus; quota/period is the same limit.
            kwargs["cpu_period"] = CPU_PERIOD_US
            kwargs["cpu_quota"] = spec.cpu_limit_millis * CPU_PERIOD_US // 1000
        if spec.memory_limit_bytes > 0:
            kwargs["mem_limit"] = spec.memory_limit_bytes
        if spec.shm_size_bytes > 0:
            kwargs["shm_size"] = spec.shm_size_bytes
        if spec.restart_always:
            # Podman restarts it whenever its process exits; a stop is final.
            kwargs["restart_policy"] = {"Name": "always"}
        if host_ports:
            bind = self._publish if self._publish not in ("", "0.0.0.0") else None
            kwargs["ports"] = {
                f"{spec.endpoints[name]}/tcp": (bind, hp) if bind else hp
                for name, hp in host_ports.items()
            }
        return kwargs

    def _reserve_published_sync(self) -> None:
        """Reserve the host ports every container on the host publishes (any node, any owner)."""
        try:
            containers = self._client().containers.list(all=True)
        except Exception as exc:  # best effort: the free-port check still applies
            log(_log, logging.WARNING, "port_scan_failed", error=explain(exc))
            return
        self._ports.published_elsewhere(published_ports(c.attrs for c in containers))

    def _force_remove_sync(self, container: Any) -> bool:
        """Remove ``container``; whether it is gone."""
        try:
            container.remove(force=True)
        except NotFound:
            return True
        except Exception as exc:
            log(_log, logging.WARNING, "cleanup_failed", name=container.name, error=explain(exc))
            return False
        return True

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
        if container is None:
            return None
        if container.attrs.get("State", {}).get("Status") in ("running", "paused", "stopping"):
            try:
                # ignore=True: a container that exits meanwhile answers 304, not an error.
                container.stop(timeout=self._stop_timeout, ignore=True)
            except Exception as exc:  # gone meanwhile, or odd reply: removal still follows
                log(_log, logging.DEBUG, "stop_skipped", name=name, error=explain(exc))
        return container

    def _remove_sync(self, name: str) -> None:
        container = self._stop_sync(name)
        if container is None:
            return
        try:
            container.remove(force=True)
        except NotFound:
            pass
        self._ports.forget(name)


def _check_limits(pids_limit: int, log_max_size: int) -> None:
    if pids_limit < 1:
        raise ValueError(f"pids_limit must be at least 1, not {pids_limit}")
    if log_max_size < MIN_LOG_MAX_SIZE:
        raise ValueError(
            f"log_max_size must be at least {MIN_LOG_MAX_SIZE} bytes, not {log_max_size}"
        )


class _PortTaken(Exception):
    """A host port was grabbed between allocation and container start."""


def _default_publish(advertise: str) -> str:
    """Bind on the advertise address when it is one of this host's, else everywhere."""
    local = {
        addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for addr in addrs
    }
    return advertise if advertise in local else "0.0.0.0"
