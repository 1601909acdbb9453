"""Leaving nothing behind: the Podman benchmarks stop the processes they
started and remove the containers and networks their runs made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Terminate each process (the latest started first); kill one that does not end."""
    for proc in reversed(procs):
        if proc.poll() is not None:
            continue
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def remove_podman_leftovers(labels: Iterable[str], networks: Iterable[str]) -> None:
    """Remove every container carrying one of `labels` (``key=value``), then `networks`."""
    for label in labels:
        ids = subprocess.run(
            ["podman", "ps", "-aq", "--filter", f"label={label}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
    for network in networks:
        subprocess.run(["podman", "network", "rm", "-f", network], capture_output=True)
