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

Logs: :meth:`PodmanRuntime.follow_logs` reads the container's k8s-file log
straight from the host (``.HostConfig.LogConfig.Path``; see
:mod:`agent.podman_logfile`): by offset, so every line is read once, in order,
within a poll period (``log_file_poll``) of being written, and across conmon's
rotations at the size cap without losing a line. Lines longer than the part
limit (64 KiB) come in parts (:mod:`agent.logparts`), so a reader never holds
more than a part per stream. Where the file cannot be read (an agent in a
container without the host's storage, or another log driver), it falls back
to Podman's log API, as follows.

Podman 4.3 loses lines when its log API *follows* a container (seen
here: ``podman logs -f`` of a 100,000-line container returns a different,
incomplete count each time, even once the container has exited), while a
plain read returns every line. So the API reading polls with
plain reads over consecutive, non-overlapping time windows ``[since, until)``
(nanosecond bounds, which Podman's ``since``/``until`` honour although its
output timestamps have whole seconds only). ``until`` trails the clock by
``log_settle`` seconds, so conmon (which stamps a line and writes it within
microseconds) has written every line of a window before the window is read;
once the container has stopped, a last read without ``until`` takes the rest.
Each read streams in a reader thread of its own pool and hands lines to the
event loop through a bounded queue, so a slow consumer slows the reader down
and nothing is dropped; Podman keeps the lines in its log file meanwhile.

Hardening: every run container is created with no-new-privileges, a pids
limit, Podman's default capability set minus NET_RAW, and a size cap on its
k8s-file log. podman-py's ``security_opt`` is *not* the way to the first: it
sends the list as SELinux label options, which Podman ignores without SELinux
(the container then runs with ``NoNewPrivs: 0``), so the runtime sets the
specgen field ``no_new_privileges`` instead. The log cap is enforced by
conmon: a write that would take the file past the cap first replaces it with
an empty file. The file reader keeps the old file open and reads it to its end
first, so nothing is lost; the API reading (which sees only the current file)
loses the lines written before the replacement and not yet read, and carries
on with the newer lines (the windows are by time, not by file offset).

Pulls (:meth:`PodmanRuntime.pull`) use libpod's ``POST /images/pull`` with
``policy=always`` (the agent decides whether to pull at all), ``tlsVerify``
as the agent says, and the credentials of that one pull in a single-registry
``X-Registry-Auth`` header, which Podman 4.3 keeps in memory (the multi-registry
form makes it write a temporary auth file; with no credentials the header is
left out, so Podman's own auth files apply). The reply streams JSON objects:
text lines, then the image id or an error; Podman 4.3 reports no byte counts
there, so progress stays 0/0 (see :class:`agent.podman_attrs.PullStream`). A
pull the agent gives up on (timeout, teardown) has its reply's socket shut
down, which ends the reading thread at once and makes Podman 4.3 abandon the
pull too (seen: its connection to a stalled registry closes within 0.3 s;
left alone, it waits on that registry indefinitely). The HTTP read timeout
bounds the thread should that fail.

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
import base64
import contextlib
import functools
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import requests
from podman import PodmanClient
from podman.errors import APIError, NotFound
from podman.errors import ImageNotFound as PodmanImageNotFound

from agent import probe as probing
from agent.logparts import DEFAULT_PART_BYTES
from agent.logutil import log
from agent.podman_attrs import PullStream, image_summary, info_from_inspect, info_from_list
from agent.podman_logfile import LogFileTail, SequenceBases
from agent.podman_logs import NS, LogDecoder, format_rfc3339_ns, parse_rfc3339_ns
from agent.ports import PortAllocator, port_is_free
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
    PullError,
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
# Podman states in which a container may still write output.
_LIVE_STATES = frozenset(
    {"running", "paused", "stopping", "created", "configured", "initialized", "restarting"}
)
LOG_CHUNK_LINES = 500
"""Lines per chunk a log reader hands to the event loop."""
LOG_STATE_EVERY = 1.0
"""Seconds between two looks at the state of a container whose log file is idle
(a teardown's stop looks at once)."""


def _explain(exc: Exception) -> str:
    """The most useful one-line text of a podman-py error."""
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def _abort(response: Any) -> None:
    """Shut the socket of a streaming reply down, so a thread reading it wakes up."""
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _error_text(response: Any) -> str:
    """The message of a libpod error reply (``{"cause", "message", ...}``)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("message") or body.get("cause")):
        return str(body.get("message") or body.get("cause"))
    return f"HTTP {response.status_code}"


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
        all interfaces. ``log_settle``: how far log windows trail the clock (see the module
        docstring); ``log_poll``: the shortest and longest pause between two
        log reads of one container (short while lines flow, growing when idle).
        ``pids_limit`` and ``log_max_size`` (bytes) apply to every run
        container (see the module docstring). ``log_files``: read log files
        directly where they are readable (else always the API); ``log_file_poll``:
        the shortest and longest pause between two looks at an idle log file;
        ``log_part_bytes``: the longest part of a line.
        """
        if pids_limit < 1:
            raise ValueError(f"pids_limit must be at least 1, not {pids_limit}")
        if log_max_size < MIN_LOG_MAX_SIZE:
            raise ValueError(
                f"log_max_size must be at least {MIN_LOG_MAX_SIZE} bytes, not {log_max_size}"
            )
        self._pids_limit = pids_limit
        self._log_max_size = log_max_size
        self._node = node_name
        self._url = url
        self._network = network_name
        self._mode: NetworkMode = network_mode
        self._advertise = advertise_address
        self._publish = (
            publish_address if publish_address is not None else _default_publish(advertise_address)
        )
        self._stop_timeout = stop_timeout
        self._executor = ThreadPoolExecutor(max_threads, thread_name_prefix="podman")
        # Log reads get their own pool: a reader held back by a slow consumer
        # must never delay a start, stop or status poll.
        self._log_executor = ThreadPoolExecutor(log_threads, thread_name_prefix="podman-logs")
        self._log_settle_ns = int(log_settle * NS)
        self._log_poll = log_poll
        self._log_files = log_files
        self._log_file_poll = log_file_poll
        self._log_part_bytes = log_part_bytes
        self._log_file_warned = False
        self._log_bases = SequenceBases()
        self._idle_tails: dict[str, LogFileTail] = {}
        """Open log files of containers whose follower was cancelled (not finished):
        the next follower re-reads the held file, even if conmon replaced it since."""
        self._handoffs: set[_Handoff] = set()
        self._log_wakers: dict[str, set[asyncio.Event]] = {}
        self._local = threading.local()
        self._clients: list[PodmanClient] = []
        self._clients_lock = threading.Lock()
        bind_host = self._publish or "0.0.0.0"
        self._ports = PortAllocator(*port_range, is_free=lambda p: port_is_free(bind_host, p))
        self._ports_by_name: dict[str, list[int]] = {}
        self._published: set[int] = set()
        """Host ports other containers publish, as last seen (reserved too)."""
        self._ports_lock = threading.Lock()
        self._ports_synced = False
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

    def _client(self) -> PodmanClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = PodmanClient(base_url=self._url)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

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
        """Pull ``image`` (libpod API, see the module docstring); return its digest."""
        loop = asyncio.get_running_loop()

        def report(p: PullProgress) -> None:  # reader thread -> event loop
            if progress is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(progress, p)

        held: list[Any] = []  # the streaming reply, so a cancelled pull can cut it
        try:
            return await self._call(
                self._pull_sync, image, auth, tls_verify, report, limit_seconds, held
            )
        except asyncio.CancelledError:
            # The caller gave up (timeout, teardown): end the reading thread now
            # rather than at its read timeout.
            for response in held:
                _abort(response)
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
        """Podman's event stream (this node's containers), as change hints.

        Read by a thread of its own (the stream never ends by itself). When
        this is cancelled, the stream's socket is shut down, which ends the
        thread's read at once; the response is never closed from the event
        loop, since closing waits for the reading thread's lock (it would block
        the loop until Podman's next event)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        sockets: list[socket.socket] = []

        def finish(error: BaseException | None) -> None:
            if not done.done():
                done.set_exception(error) if error else done.set_result(None)

        def read() -> None:
            client = PodmanClient(base_url=self._url)
            error: BaseException | None = None
            try:
                filters = {"type": ["container"], "label": [f"{LABEL_NODE}={self._node}"]}
                reply = client.api.get(
                    "/events",
                    params={"stream": "true", "filters": json.dumps(filters)},
                    stream=True,
                )
                sock = getattr(getattr(reply.raw, "connection", None), "sock", None)
                if isinstance(sock, socket.socket):
                    sockets.append(sock)
                reply.raise_for_status()
                for line in reply.iter_lines():
                    if done.done():
                        break
                    if line:
                        loop.call_soon_threadsafe(notify)
            except BaseException as exc:  # ends with the stream; the caller retries
                error = exc
            finally:
                with contextlib.suppress(Exception):
                    client.close()
                with contextlib.suppress(RuntimeError):  # the loop may be closed
                    loop.call_soon_threadsafe(finish, error)

        threading.Thread(target=read, name=f"podman-events-{self._node}", daemon=True).start()
        try:
            await done
        finally:
            if not done.done():
                done.cancel()
            for sock in sockets:  # no lock involved: the reader sees the end at once
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

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
                self._forget_logs(info.name)
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
            for waker in self._log_wakers.get(info.name, ()):
                waker.set()

    async def follow_logs(self, name: str) -> AsyncIterator[list[LogLine]]:
        """Every line of ``name`` from the first; see the module docstring for how."""
        tail = await self._open_log_file(name) if self._log_files else None
        source = self._follow_file(name, tail) if tail else self._follow_api(name)
        async with contextlib.aclosing(source) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _open_log_file(self, name: str) -> LogFileTail | None:
        """A tail of ``name``'s k8s-file log from its first line (the file a cancelled
        follower held, else the container's current file), or ``None`` where the
        file cannot be read."""
        idle = self._idle_tails.pop(name, None)
        if idle is not None:
            try:
                await self._call_logs(idle.rewind)
                return idle
            except OSError:
                idle.close()
        for attempt in range(4):
            try:
                return await self._call_logs(self._open_log_file_sync, name)
            except Exception as exc:
                # Podman 4.3 may fail an inspect of a container that is just exiting
                # ("read /proc/N/cgroup: no such process"): look again shortly.
                log(_log, logging.DEBUG, "log_file_lookup_failed", name=name, error=_explain(exc))
                await asyncio.sleep(0.1 * 2**attempt)
        return None

    def _release_tail(self, name: str, tail: LogFileTail, reading: Future[int] | None) -> None:
        """A follower of ``name`` stopped before the end: keep its file open for the next."""
        if reading is not None and not reading.done():  # its thread still reads: not reusable
            reading.add_done_callback(lambda _: tail.close())
            return
        if not os.path.exists(tail.path):  # the container was removed meanwhile
            tail.close()
            self._forget_logs(name)
            return
        previous = self._idle_tails.pop(name, None)
        if previous is not None:
            previous.close()
        self._idle_tails[name] = tail

    def _forget_logs(self, name: str) -> None:
        """``name`` was removed: nothing of its log files is needed any more."""
        idle = self._idle_tails.pop(name, None)
        if idle is not None:
            idle.close()
        self._log_bases.forget(name)

    async def _follow_file(self, name: str, tail: LogFileTail) -> AsyncIterator[list[LogLine]]:
        """Every line of the log file from the first until the container has stopped."""
        loop = asyncio.get_running_loop()
        shortest, longest = self._log_file_poll
        pause = shortest
        check_at = 0.0
        final = done = False
        reading: Future[int] | None = None
        waker = asyncio.Event()
        self._log_wakers.setdefault(name, set()).add(waker)
        try:
            while True:
                woken = waker.is_set()
                waker.clear()
                out: list[LogLine] = []
                reading = self._log_executor.submit(tail.read, out)
                read = await asyncio.wrap_future(reading)
                for start in range(0, len(out), LOG_CHUNK_LINES):
                    yield out[start : start + LOG_CHUNK_LINES]
                if read:
                    pause = shortest
                    continue
                if final:  # stopped, and read to the end after that
                    out = []
                    tail.finish(out)
                    done = True
                    if out:
                        yield out
                    log(
                        _log,
                        logging.DEBUG,
                        "log_file_done",
                        name=name,
                        rotations=tail.rotations,
                        truncations=tail.truncations,
                        files_skipped=tail.skipped,
                        bad_records=tail.bad_records,
                    )
                    return
                if woken or loop.time() >= check_at:
                    try:
                        settle_in = await self._call_logs(self._stopped_for, name)
                    except Exception as exc:  # as above: look again shortly
                        log(_log, logging.DEBUG, "log_state_failed", name=name, error=_explain(exc))
                        check_at = loop.time() + shortest
                        await _sleep(pause, waker)
                        continue
                    if settle_in is not None and settle_in <= 0:
                        final = True  # read once more: what it wrote last is there now
                        continue
                    if settle_in is not None:
                        await asyncio.sleep(settle_in)
                        continue
                    check_at = loop.time() + LOG_STATE_EVERY
                await _sleep(pause, waker)
                pause = min(longest, pause * 2)
        finally:
            if tail.truncations or tail.skipped:  # lines were written and never read
                log(
                    _log,
                    logging.WARNING,
                    "log_lines_lost",
                    name=name,
                    files_skipped=tail.skipped,
                    truncations=tail.truncations,
                )
            if done:
                tail.close()
            else:
                self._release_tail(name, tail, reading)
            self._forget_waker(name, waker)

    async def _call_logs(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on a log reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._log_executor, fn, *args)

    def _forget_waker(self, name: str, waker: asyncio.Event) -> None:
        wakers = self._log_wakers.get(name)
        if wakers is not None:
            wakers.discard(waker)
            if not wakers:
                del self._log_wakers[name]

    async def _follow_api(self, name: str) -> AsyncIterator[list[LogLine]]:
        """Every line of ``name`` through the log API, by time windows."""
        cursor = _LogCursor(LogDecoder(self._log_part_bytes))
        shortest, longest = self._log_poll
        pause = shortest
        failures = 0
        waker = asyncio.Event()
        self._log_wakers.setdefault(name, set()).add(waker)
        try:
            while True:
                waker.clear()
                item: _ReadDone | None = None
                async with contextlib.aclosing(self._read_log_once(name, cursor)) as chunks:
                    async for chunk in chunks:
                        if isinstance(chunk, _ReadDone):
                            item = chunk
                        else:
                            yield chunk
                assert item is not None  # a read always ends with its _ReadDone
                if isinstance(item.result, BaseException):
                    failures += 1
                    delay = min(5.0, shortest * 2**failures)
                    log(
                        _log,
                        logging.WARNING if failures == 1 else logging.DEBUG,
                        "log_read_failed",
                        name=name,
                        error=_explain(item.result)
                        if isinstance(item.result, Exception)
                        else item.result,
                        retry_in=f"{delay:.2f}s",
                    )
                    await _sleep(delay, waker)
                    continue
                failures = 0
                read = item.result
                if read.finished:
                    return
                if read.settle_in is not None:  # stopped: read the rest once it has settled
                    await asyncio.sleep(max(0.01, read.settle_in))
                    continue
                pause = shortest if read.lines else min(longest, pause * 2)
                # Each read makes Podman scan the whole log file: never spend more
                # than about half of the time reading one container's log.
                await _sleep(max(pause, read.busy), waker)
        finally:
            self._forget_waker(name, waker)

    async def _read_log_once(
        self, name: str, cursor: _LogCursor
    ) -> AsyncIterator[list[LogLine] | _ReadDone]:
        """One window read in a reader thread: its chunks, then its ``_ReadDone``."""
        loop = asyncio.get_running_loop()
        handoff = _Handoff(loop)
        self._handoffs.add(handoff)
        future = loop.run_in_executor(self._log_executor, self._log_reader, name, cursor, handoff)
        future.add_done_callback(_retrieve)
        try:
            while True:
                item = await handoff.get()
                yield item
                if isinstance(item, _ReadDone):
                    return
        finally:
            handoff.close()
            self._handoffs.discard(handoff)

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
        for handoff in list(self._handoffs):
            handoff.close()
        for name in list(self._idle_tails):
            self._forget_logs(name)
        await asyncio.to_thread(self._log_executor.shutdown, True)
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

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
                        f"cannot create network '{self._network}': {_explain(exc)}"
                    ) from exc
        self._network_ready = True

    def _image_digest_sync(self, image: str) -> str | None:
        try:
            attrs = self._client().images.get(image).attrs
        except (NotFound, PodmanImageNotFound):  # podman-py's is no NotFound
            return None
        return str(attrs.get("Digest") or "")

    def _pull_sync(
        self,
        image: str,
        auth: RegistryAuth | None,
        tls_verify: bool,
        report: ProgressCallback,
        limit_seconds: float | None,
        held: list[Any],
    ) -> str:
        headers = {}
        if auth is not None:
            # One registry's credentials: Podman keeps them in memory for this pull.
            single = json.dumps({"username": auth.username, "password": auth.password})
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(single.encode()).decode()
        params = {"reference": image, "policy": "always", "tlsVerify": tls_verify}
        stream = PullStream()
        try:
            response = self._client().api.post(
                "/images/pull",
                params=params,
                headers=headers,
                stream=True,
                timeout=(10, limit_seconds),
            )
            held.append(response)
            try:
                if response.status_code >= 400:
                    raise PullError(_error_text(response))
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if (p := stream.feed(obj)) is not None:
                        report(p)
            finally:
                response.close()
        except (requests.exceptions.RequestException, APIError) as exc:
            # podman-py wraps transport errors at request time in APIError; a read
            # timeout while streaming arrives as requests' ConnectionError.
            if "timed out" in str(exc).lower() and limit_seconds is not None:
                raise PullError(f"no word from Podman for {limit_seconds:g}s") from None
            raise PullError(f"Podman API: {_explain(exc)}") from None
        if stream.error is not None:
            raise PullError(stream.error)
        if stream.image_id is None:
            raise PullError("Podman ended the pull without naming an image")
        digest = self._image_digest_sync(stream.image_id)
        return digest or ""

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
                raise RuntimeFailure(f"start {container.name}: {_explain(exc)}") from exc
            container.reload()
        info = info_from_inspect(container.attrs, self._node, self._network)
        if info is None:
            raise RuntimeFailure(
                f"a container named {container.name} exists but is not managed by node "
                f"'{self._node}'"
            )
        return info

    def _allocate_ports(self, spec: ContainerSpec) -> dict[str, int]:
        with self._ports_lock:
            synced = self._ports_synced
        if not synced:
            self._list_sync()  # reserve ports of containers that existed before this agent
            self._reserve_published_sync()  # and of every other container on the host
        ports: dict[str, int] = {}
        try:
            for name in spec.endpoints:
                ports[name] = self._ports.allocate()
        except Exception as exc:
            self._ports.release(ports.values())
            raise RuntimeFailure(str(exc)) from exc
        return ports

    def _create_and_start_sync(
        self, spec: ContainerSpec, host_ports: dict[str, int]
    ) -> ContainerInfo:
        client = self._client()
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
        if host_ports:
            bind = self._publish if self._publish not in ("", "0.0.0.0") else None
            kwargs["ports"] = {
                f"{spec.endpoints[name]}/tcp": (bind, hp) if bind else hp
                for name, hp in host_ports.items()
            }
        try:
            try:
                try:
                    container = client.containers.create(spec.image, **kwargs)
                except APIError as exc:
                    if "network not found" not in _explain(exc).lower():
                        raise
                    # Someone removed the network under a running agent: recreate, retry once.
                    self._ensure_network_sync()
                    container = client.containers.create(spec.image, **kwargs)
            except APIError as exc:
                # Created concurrently (another start of the same name). Podman 4.3
                # answers 500 "... name ... is already in use" rather than 409.
                if exc.status_code == 409 or _NAME_IN_USE.search(_explain(exc)):
                    existing = self._get_sync(spec.name)
                    if existing is not None:
                        self._ports.release(host_ports.values())  # it has its own
                        host_ports = {}
                        info = self._adopt_existing_sync(existing)
                        self._record_ports(info.name, info.host_ports.values())
                        return info
                raise RuntimeFailure(f"create {spec.name}: {_explain(exc)}") from exc
        except BaseException:
            self._ports.release(host_ports.values())  # nothing was created
            raise
        try:
            try:
                container.start()
            except APIError as exc:
                if host_ports and _ADDR_IN_USE.search(_explain(exc)):
                    raise _PortTaken() from exc
                raise RuntimeFailure(f"start {spec.name}: {_explain(exc)}") from exc
            container.reload()
            info = info_from_inspect(container.attrs, self._node, self._network)
            if info is None:
                raise RuntimeFailure(f"start {spec.name}: created container lost its labels")
        except BaseException:
            # Leave nothing behind so the start can be retried cleanly; the
            # ports are free again only once the container is really gone.
            if self._force_remove_sync(container):
                self._ports.release(host_ports.values())
            else:
                self._record_ports(spec.name, host_ports.values())
            raise
        self._record_ports(spec.name, host_ports.values())
        return info

    def _record_ports(self, name: str, ports: Iterable[int]) -> None:
        """``name`` holds ``ports`` until it is removed (reserved in the allocator)."""
        ports = list(ports)
        if not ports:
            return
        with self._ports_lock:
            self._ports.reserve(ports)
            self._ports_by_name[name] = sorted(set(self._ports_by_name.get(name, [])) | set(ports))

    def _reserve_published_sync(self) -> None:
        """Reserve the host ports every container on the host publishes (any node, any owner)."""
        try:
            containers = self._client().containers.list(all=True)
        except Exception as exc:  # best effort: the free-port check still applies
            log(_log, logging.WARNING, "port_scan_failed", error=_explain(exc))
            return
        published: set[int] = set()
        for container in containers:
            for binding in container.attrs.get("Ports") or []:
                try:
                    first = int(binding.get("host_port") or 0)
                    count = max(1, int(binding.get("range") or 1))
                except (TypeError, ValueError):
                    continue
                if first:
                    published.update(range(first, first + count))
        with self._ports_lock:
            ours = {p for ports in self._ports_by_name.values() for p in ports}
            self._ports.release(self._published - published - ours)
            self._ports.reserve(published)
            self._published = published

    def _force_remove_sync(self, container: Any) -> bool:
        """Remove ``container``; whether it is gone."""
        try:
            container.remove(force=True)
        except NotFound:
            return True
        except Exception as exc:
            log(_log, logging.WARNING, "cleanup_failed", name=container.name, error=_explain(exc))
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
        with self._ports_lock:
            before = set(self._ports_by_name)
        containers = self._client().containers.list(
            all=True,
            # List form: podman-py stringifies list values inside a dict filter.
            filters=[f"label={LABEL_RUN_ID}", f"label={LABEL_NODE}={self._node}"],
        )
        infos = [i for c in containers if (i := info_from_list(c.attrs)) is not None]
        self._sync_ports(infos, before)  # every container of the node holds its ports
        return self.cluster.keep(infos)

    def _sync_ports(self, infos: list[ContainerInfo], before: set[str]) -> None:
        """Reserve ports of adopted containers; release those of vanished ones.

        Only names recorded *before* the list call are released, so a container
        created while the list was in flight keeps its ports.
        """
        seen = {i.name for i in infos}
        with self._ports_lock:
            for name in before - seen:
                self._ports.release(self._ports_by_name.pop(name, []))
            for info in infos:
                if info.host_ports and info.name not in self._ports_by_name:
                    self._ports_by_name[info.name] = list(info.host_ports.values())
                    self._ports.reserve(info.host_ports.values())
            self._ports_synced = True

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
                log(_log, logging.DEBUG, "stop_skipped", name=name, error=_explain(exc))
        return container

    def _remove_sync(self, name: str) -> None:
        container = self._stop_sync(name)
        if container is None:
            return
        try:
            container.remove(force=True)
        except NotFound:
            pass
        with self._ports_lock:
            self._ports.release(self._ports_by_name.pop(name, []))

    # -- logs (log reader threads only) ---------------------------------------------

    def _open_log_file_sync(self, name: str) -> LogFileTail | None:
        try:
            container = self._client().containers.get(name)
        except NotFound:
            return None
        config = (container.attrs.get("HostConfig") or {}).get("LogConfig") or {}
        path = config.get("Path")
        if config.get("Type") != "k8s-file" or not path:
            return None
        try:
            return LogFileTail(str(path), self._log_part_bytes, self._log_bases, name)
        except OSError as exc:
            if not self._log_file_warned:  # the same for every container: say it once
                self._log_file_warned = True
                log(
                    _log,
                    logging.WARNING,
                    "log_file_unreadable",
                    name=name,
                    path=path,
                    error=exc.strerror or exc,
                    fallback="podman log API",
                )
            return None

    def _stopped_for(self, name: str) -> float | None:
        """``None`` while ``name`` may still write; once it has stopped, the
        seconds until its output has settled in its log (<= 0: now; a removed
        container has nothing more to write)."""
        try:
            container = self._client().containers.get(name)
        except NotFound:
            return 0.0
        state = container.attrs.get("State") or {}
        if str(state.get("Status", "")).lower() in _LIVE_STATES:
            return None
        try:
            ready_at = parse_rfc3339_ns(str(state.get("FinishedAt", ""))) + self._log_settle_ns
        except ValueError:
            return 0.0
        return (ready_at - time.time_ns()) / NS

    def _log_reader(self, name: str, cursor: _LogCursor, handoff: _Handoff) -> None:
        """One read of ``name``'s next log window; always ends with a ``_ReadDone``."""
        result: _Read | BaseException
        try:
            result = self._read_log_window(name, cursor, handoff)
        except _Abandoned:
            return
        except Exception as exc:
            result = exc
        try:
            handoff.put(_ReadDone(result))
        except _Abandoned:
            pass

    def _read_log_window(self, name: str, cursor: _LogCursor, handoff: _Handoff) -> _Read:
        began = time.monotonic()
        client = self._client()
        try:
            container = client.containers.get(name)
        except NotFound:
            return self._logs_gone(cursor, handoff, began)
        state = container.attrs.get("State") or {}
        now = time.time_ns()
        final, settle_in = False, None
        if str(state.get("Status", "")).lower() not in _LIVE_STATES:
            try:
                ready_at = parse_rfc3339_ns(str(state.get("FinishedAt", ""))) + self._log_settle_ns
            except ValueError:
                ready_at = 0
            final = now >= ready_at
            settle_in = None if final else (ready_at - now) / NS
        until = None if final else now - self._log_settle_ns
        if until is not None and cursor.since is not None and until <= cursor.since:
            return _Read(False, 0, time.monotonic() - began, settle_in)
        params: dict[str, Any] = {"stdout": True, "stderr": True, "timestamps": True}
        if cursor.since is not None:
            # Podman keeps lines strictly after ``since`` and strictly before ``until``.
            params["since"] = format_rfc3339_ns(cursor.since - 1)
        if until is not None:
            params["until"] = format_rfc3339_ns(until)
        decoder = cursor.decoder
        decoder.begin(skip=cursor.frames_done)
        out: list[LogLine] = []
        lines = 0
        waited = 0.0
        try:
            try:
                response = client.api.get(
                    f"/containers/{container.id}/logs", params=params, stream=True
                )
                response.raise_for_status()
            except NotFound:
                return self._logs_gone(cursor, handoff, began)
            try:
                for data in response.iter_content(chunk_size=65536):
                    decoder.feed(data, out)
                    if len(out) >= LOG_CHUNK_LINES:
                        lines += len(out)
                        waited += handoff.put(out)
                        out = []
            finally:
                response.close()
            if final:
                decoder.finish(out)
        finally:
            # Hand over what was decoded even when the read failed, and remember
            # how far this window got, so that the retry skips exactly that.
            cursor.frames_done = max(cursor.frames_done, decoder.frames)
            if out:
                lines += len(out)
                waited += handoff.put(out)
        cursor.since, cursor.frames_done = until, 0
        return _Read(final, lines, time.monotonic() - began - waited, None)

    @staticmethod
    def _logs_gone(cursor: _LogCursor, handoff: _Handoff, began: float) -> _Read:
        """The container was removed: its partial lines are all that is left."""
        out: list[LogLine] = []
        cursor.decoder.finish(out)
        if out:
            handoff.put(out)
        return _Read(True, len(out), time.monotonic() - began, None)


@dataclass
class _LogCursor:
    """Where one container's log reading stands between two API reads."""

    decoder: LogDecoder = field(default_factory=LogDecoder)
    since: int | None = None
    """Start (ns, inclusive) of the next window; ``None``: from the first line."""
    frames_done: int = 0
    """Frames of the current window already handed over by a failed read."""


@dataclass(frozen=True)
class _Read:
    """What one window read found."""

    finished: bool
    """The container stopped (or is gone) and everything was handed over."""
    lines: int
    busy: float
    """Seconds the read took, not counting waits for the consumer."""
    settle_in: float | None
    """Stopped, but the last read must wait this many seconds more."""


@dataclass(frozen=True)
class _ReadDone:
    """Marks the end of one read in the handoff queue."""

    result: _Read | BaseException


class _Abandoned(Exception):
    """The consumer of a log read went away; the reader thread stops."""


class _Handoff:
    """A bounded queue from one reader thread to the event loop.

    ``put`` blocks the thread while the queue is full (backpressure, never a
    drop) and gives up once the consumer closed the queue; ``get`` awaits
    without blocking the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 8) -> None:
        """A queue whose consumer runs on ``loop``."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._loop = loop
        self._ready = asyncio.Event()
        self._closed = threading.Event()

    def put(self, item: Any) -> float:
        """(Reader thread) enqueue ``item``; return the seconds spent waiting for room."""
        began = time.monotonic()
        while True:
            if self._closed.is_set():
                raise _Abandoned()
            try:
                self._queue.put(item, timeout=0.2)
                break
            except queue.Full:
                continue
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody will ever read
            self._closed.set()
            raise _Abandoned() from None
        return time.monotonic() - began

    async def get(self) -> Any:
        """(Event loop) the next item, waiting for one if needed."""
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            self._ready.clear()
            try:  # an item may have arrived between the two checks
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            await self._ready.wait()

    def close(self) -> None:
        """(Event loop) the consumer is gone: make the reader stop."""
        self._closed.set()


async def _sleep(seconds: float, waker: asyncio.Event) -> None:
    """Sleep ``seconds``, or less if ``waker`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waker.wait(), seconds)


def _retrieve(future: Future[Any] | asyncio.Future[Any]) -> None:
    """Mark a reader's outcome as seen (it is reported through the handoff)."""
    if not future.cancelled():
        future.exception()


class _PortTaken(Exception):
    """A host port was grabbed between allocation and container start."""


def _default_publish(advertise: str) -> str:
    """Bind on the advertise address when it is one of this host's, else everywhere."""
    local = {
        addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for addr in addrs
    }
    return advertise if advertise in local else "0.0.0.0"
