"""Host-port accounting of the Podman runtime in host-port mode.

Which host ports each container of this node holds, and which ports other
containers on the host publish, on top of the range allocator of
:mod:`agent.ports`. Thread-safe (the runtime works in executor threads) and
free of Podman: the runtime tells it what it created, removed and listed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psutil

from agent.ports import PortAllocator, port_is_free
from agent.runtime import ContainerInfo


class HostPorts:
    """The host ports of one node's containers, and those other containers publish."""

    def __init__(
        self,
        port_range: tuple[int, int],
        bind_host: str,
        is_free: Callable[[int], bool] | None = None,
    ) -> None:
        """Allocate from ``port_range`` (inclusive) ports free on ``bind_host``
        (``is_free``: how to tell, by default by binding the port there)."""
        free = is_free or (lambda p: port_is_free(bind_host, p))
        self._allocator = PortAllocator(*port_range, is_free=free)
        self._by_name: dict[str, list[int]] = {}
        self._published: set[int] = set()
        """Host ports other containers publish, as last seen (reserved too)."""
        self._lock = threading.Lock()
        self._synced = False

    @property
    def allocated(self) -> frozenset[int]:
        """Ports handed out or reserved."""
        return self._allocator.allocated

    @property
    def synced(self) -> bool:
        """Whether the node's containers were listed at least once (:meth:`sync`)."""
        with self._lock:
            return self._synced

    def names(self) -> set[str]:
        """The containers that hold ports now."""
        with self._lock:
            return set(self._by_name)

    def allocate(self, endpoints: Iterable[str]) -> dict[str, int]:
        """A free port for each endpoint name; nothing is taken when one is missing."""
        ports: dict[str, int] = {}
        try:
            for name in endpoints:
                ports[name] = self._allocator.allocate()
        except BaseException:
            self._allocator.release(ports.values())
            raise
        return ports

    def release(self, ports: Iterable[int]) -> None:
        """Return ports no container got."""
        self._allocator.release(ports)

    def record(self, name: str, ports: Iterable[int]) -> None:
        """``name`` holds ``ports`` until it is removed (reserved in the allocator)."""
        ports = list(ports)
        if not ports:
            return
        with self._lock:
            self._allocator.reserve(ports)
            self._by_name[name] = sorted(set(self._by_name.get(name, [])) | set(ports))

    def forget(self, name: str) -> None:
        """``name`` was removed: its ports are free again."""
        with self._lock:
            self._allocator.release(self._by_name.pop(name, []))

    def published_elsewhere(self, published: set[int]) -> None:
        """Every container on the host publishes ``published`` now: reserve those."""
        with self._lock:
            ours = {p for ports in self._by_name.values() for p in ports}
            self._allocator.release(self._published - published - ours)
            self._allocator.reserve(published)
            self._published = published

    def sync(self, infos: list[ContainerInfo], before: set[str]) -> None:
        """Reserve ports of adopted containers; release those of vanished ones.

        Only names recorded *before* the list call (``before``, from :meth:`names`)
        are released, so a container created while the list was in flight keeps
        its ports.
        """
        seen = {i.name for i in infos}
        with self._lock:
            for name in before - seen:
                self._allocator.release(self._by_name.pop(name, []))
            for info in infos:
                if info.host_ports and info.name not in self._by_name:
                    self._by_name[info.name] = list(info.host_ports.values())
                    self._allocator.reserve(info.host_ports.values())
            self._synced = True


def published_ports(containers: Iterable[Mapping[str, Any]]) -> set[int]:
    """The host ports the containers publish (libpod list form, ``Ports``)."""
    published: set[int] = set()
    for attrs in containers:
        for binding in attrs.get("Ports") or []:
            try:
                first = int(binding.get("host_port") or 0)
                count = max(1, int(binding.get("range") or 1))
            except (TypeError, ValueError):
                continue
            if first:
                published.update(range(first, first + count))
    return published


def default_publish_address(advertise: str) -> str:
    """Bind on the advertise address when it is one of this host's, else everywhere."""
    local = {
        addr.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for addr in addrs
    }
    return advertise if advertise in local else "0.0.0.0"
