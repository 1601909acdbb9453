"""Podman's event feed of one node's containers, as change hints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable

from podman import PodmanClient

from agent.runtime import LABEL_NODE


async def watch_events(url: str, node: str, notify: Callable[[], None]) -> None:
    """Call ``notify`` on the event loop for each Podman event of ``node``'s containers.

    Read by a thread of its own (the stream never ends by itself). When
    this is cancelled, the stream's socket is shut down, which ends the
    thread's read at once; the response is never closed from the event
    loop, since closing waits for the reading thread's lock (it would block
    the loop until Podman's next event). Ends (or raises) when the stream does."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sockets: list[socket.socket] = []

    def finish(error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error else done.set_result(None)

    def read() -> None:
        client = PodmanClient(base_url=url)
        error: BaseException | None = None
        try:
            filters = {"type": ["container"], "label": [f"{LABEL_NODE}={node}"]}
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

    threading.Thread(target=read, name=f"podman-events-{node}", daemon=True).start()
    try:
        await done
    finally:
        if not done.done():
            done.cancel()
        for sock in sockets:  # no lock involved: the reader sees the end at once
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
