"""What the host shows of a chaos cluster: Podman's create events, its
container listing polled, and the processes that name the cluster's files."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from podman import PodmanClient

from tests.e2e.conftest import PODMAN_SOCKET

EVENT_ARGS = (
    "events",
    "--filter",
    "event=create",
    "--filter",
    "type=container",
    "--format",
    "json",
)


class EventStream:
    """`podman events` following the event log from `since` on, in a thread."""

    def __init__(self, since: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["podman", *EVENT_ARGS, "--since", since],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)


class ContainerWatch:
    """Lists the host's containers through the Podman API every `interval` s and
    records the ids each name of `nodes` had: a second container under one name
    shows as a second id. Every container here lives far longer than the
    interval (a job sleeps at least 0.5 s), so none goes unseen; this backs up
    Podman's event log, which loses events under load (see `create_events`)."""

    def __init__(self, nodes: Callable[[], set[str]], interval: float = 0.2) -> None:
        self.ids: dict[str, set[str]] = {}
        self._nodes = nodes
        self._interval = interval
        self._halt = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with PodmanClient(base_url=f"unix://{PODMAN_SOCKET}") as client:
            while not self._halt.is_set():
                try:
                    containers = client.containers.list(all=True)
                except Exception:
                    self.failures += 1
                    containers = []
                nodes = self._nodes()
                for c in containers:
                    attrs = c.attrs
                    if (attrs.get("Labels") or {}).get("muster.node") in nodes:
                        name = (attrs.get("Names") or [c.name])[0].lstrip("/")
                        self.ids.setdefault(name, set()).add(attrs.get("Id") or c.id)
                self._halt.wait(self._interval)

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)


def processes_mentioning(path: Path) -> list[str]:
    """Processes whose command line names `path` (the cluster's files): none may outlive it."""
    found = []
    needle = str(path).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {text[:160]}")
    return found
