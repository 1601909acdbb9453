"""``muster-agent`` / ``python -m agent``."""

from __future__ import annotations

import asyncio
import sys

from agent.app import run_agent
from agent.config import parse_args
from agent.credentials import JoinError
from agent.logutil import configure
from muster.common.gc_tuning import tune_gc


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the agent until SIGTERM/SIGINT, return the exit status."""
    config = parse_args(argv)
    configure(config.log_level)
    tune_gc()
    try:
        asyncio.run(run_agent(config))
    except JoinError as exc:
        print(f"muster-agent: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
