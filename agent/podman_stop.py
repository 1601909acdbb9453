"""Stopping and removing one Podman container, tolerating the races of a busy host.

A container may exit, or be removed by someone else, between any two calls:
those outcomes are what was asked for, not errors. Everything here blocks:
call it from the runtime's executor threads only.
"""

from __future__ import annotations

import logging
from typing import Any

from podman.errors import NotFound

from agent.logutil import log
from agent.podman_client import explain

_log = logging.getLogger(__name__)
_STOPPABLE = ("running", "paused", "stopping")


def stop_sync(container: Any, timeout: int) -> None:
    """Stop ``container`` (``timeout`` seconds before SIGKILL) if it runs."""
    if container.attrs.get("State", {}).get("Status") not in _STOPPABLE:
        return
    try:
        # ignore=True: a container that exits meanwhile answers 304, not an error.
        container.stop(timeout=timeout, ignore=True)
    except Exception as exc:  # gone meanwhile, or odd reply: removal still follows
        log(_log, logging.DEBUG, "stop_skipped", name=container.name, error=explain(exc))


def remove_sync(container: Any) -> None:
    """Remove ``container`` (forced); one already gone is fine, other errors raise."""
    try:
        container.remove(force=True)
    except NotFound:
        pass


def force_remove_sync(container: Any) -> bool:
    """Remove ``container``; whether it is gone (a failure is logged, not raised)."""
    try:
        container.remove(force=True)
    except NotFound:
        return True
    except Exception as exc:
        log(_log, logging.WARNING, "cleanup_failed", name=container.name, error=explain(exc))
        return False
    return True
