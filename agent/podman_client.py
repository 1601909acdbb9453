"""podman-py clients, one per thread, and the text of podman-py's errors.

podman-py is blocking and does not promise thread safety, so every thread that
talks to Podman (the runtime's pool, the log readers) gets a ``PodmanClient`` of
its own, made on first use and closed with the runtime.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from podman import PodmanClient


class ClientPool:
    """A ``PodmanClient`` per thread, all on one API socket."""

    def __init__(self, url: str) -> None:
        """Clients of ``url``; none is made before the first :meth:`get`."""
        self._url = url
        self._local = threading.local()
        self._clients: list[PodmanClient] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The API socket's URL."""
        return self._url

    def get(self) -> PodmanClient:
        """The calling thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = PodmanClient(base_url=self._url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every client made so far."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def explain(exc: BaseException) -> str:
    """The most useful one-line text of a podman-py error."""
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def abort_reply(response: Any) -> None:
    """Shut the socket of a streaming reply down, so a thread reading it wakes up."""
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
