"""Host port allocation for host-port mode.

The agent hands out host ports from ``--port-range`` itself (Nomad-style)
instead of letting Podman pick random ones, so addresses stay inside a range an
operator can open in a firewall. Allocation is thread-safe because the Podman
runtime allocates inside executor threads.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable


class PortsExhausted(Exception):
    """Every port of the range is allocated or in use."""


def parse_port_range(text: str) -> tuple[int, int]:
    """Parse ``LO-HI`` (inclusive, 1..65535, LO <= HI)."""
    lo_text, sep, hi_text = text.partition("-")
    try:
        if not sep:
            raise ValueError
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise ValueError(f"port range '{text}' must look like LO-HI, e.g. 30000-32767") from None
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"port range '{text}' must satisfy 1 <= LO <= HI <= 65535")
    return lo, hi


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing on this host holds ``port`` (blocking; call off the loop).

    No ``SO_REUSEADDR``: a port still in TIME_WAIT counts as busy, which only
    makes the allocator more conservative.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Round-robin allocator over an inclusive port range.

    Round-robin (rather than lowest-free) avoids immediately re-using a port
    that a just-removed container released.
    """

    def __init__(
        self,
        lo: int,
        hi: int,
        is_free: Callable[[int], bool] | None = None,
    ) -> None:
        self._lo, self._hi = lo, hi
        self._is_free = is_free or (lambda port: port_is_free("0.0.0.0", port))
        self._used: set[int] = set()
        self._next = lo
        self._lock = threading.Lock()

    def reserve(self, ports: Iterable[int]) -> None:
        """Mark ports as taken (e.g. those of containers found at startup)."""
        with self._lock:
            self._used.update(ports)

    def release(self, ports: Iterable[int]) -> None:
        """Return ports to the pool."""
        with self._lock:
            self._used.difference_update(ports)

    def allocate(self) -> int:
        """Take the next free port; raises :class:`PortsExhausted`."""
        with self._lock:
            size = self._hi - self._lo + 1
            for _ in range(size):
                port = self._next
                self._next = self._lo if port >= self._hi else port + 1
                if port in self._used or not self._is_free(port):
                    continue
                self._used.add(port)
                return port
        raise PortsExhausted(f"no free host port left in {self._lo}-{self._hi}")

    @property
    def allocated(self) -> frozenset[int]:
        """Ports currently handed out or reserved."""
        with self._lock:
            return frozenset(self._used)
