"""A registry that accepts TCP connections and never answers (for pull timeouts)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class StalledRegistry:
    """A listener that accepts connections and never answers."""

    host: str
    held: list[socket.socket] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return len(self.held)

    def open_connections(self) -> int:
        """Accepted connections whose client has not closed them."""
        count = 0
        for conn in list(self.held):
            try:
                while conn.recv(65536, socket.MSG_DONTWAIT):  # drain what the client sent
                    pass
            except BlockingIOError:
                count += 1  # nothing more to read, and no end: still open
            except OSError:
                pass
        return count


@contextlib.contextmanager
def stalled_registry() -> Iterator[StalledRegistry]:
    """A registry on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stalled = StalledRegistry(f"127.0.0.1:{server.getsockname()[1]}")
    held = stalled.held
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, name="stalled-registry", daemon=True)
    thread.start()
    try:
        yield stalled
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()
