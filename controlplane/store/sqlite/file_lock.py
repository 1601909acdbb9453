"""The lock that keeps a SQLite file to one control plane."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from controlplane.store.base import StoreInUse


def lock_database(path: Path) -> int:
    """Take an exclusive lock on `<path>.lock` and return its descriptor.

    flock, not a PID file: the kernel drops the lock when the process dies
    (even by SIGKILL), so a crash never leaves a stale lock behind. The file
    holds the owner's PID, only to name it in the refusal."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = ""
        with contextlib.suppress(OSError, ValueError):
            owner = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise StoreInUse(
            f"database {path} is in use by another control plane{owner}: {lock_path} is "
            "locked. Stop that control plane first, or give this one its own --db"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
