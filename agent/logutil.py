"""Structured ``key=value`` logging helpers.

Log lines are grep- and machine-friendly (``event=start_container run_id=7``),
which matters when several agents log into one compose stream.
"""

from __future__ import annotations

import logging
from typing import Any


def _fmt(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def kv(event: str, **fields: Any) -> str:
    """Render ``event`` and ``fields`` as one ``event=... key=value`` line."""
    parts = [f"event={_fmt(event)}"]
    parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


def log(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log one structured line if ``level`` is enabled (formatting is skipped otherwise)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", kv(event, **fields))


def configure(level: str) -> None:
    """Configure root logging with a ``key=value`` line format."""
    logging.basicConfig(
        level=level.upper(),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    # Per-request HTTP and gRPC internals drown the agent's own lines at DEBUG.
    for noisy in ("urllib3", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
