"""`muster-controlplane` / `python -m controlplane`: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from controlplane.core.nodes import Liveness
from controlplane.server import start
from controlplane.services.orchestrator import Settings

DEFAULT_LISTEN = "127.0.0.1:50051"


def default_db() -> Path:
    """SQLite file in the user's data directory (created on start)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "muster" / "controlplane.db"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="muster-controlplane", description="muster control plane (gRPC)"
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get("MUSTER_LISTEN", DEFAULT_LISTEN),
        help=f"HOST:PORT to serve gRPC on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("MUSTER_DB") or str(default_db()),
        help="SQLite database file (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--readiness-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="fail a run whose workers are not ready this long after placement",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often agents send heartbeats",
    )
    parser.add_argument(
        "--node-not-ready-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a node without heartbeats this long is NotReady",
    )
    parser.add_argument(
        "--node-lost-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a node without heartbeats this long is Lost; its runs fail",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.heartbeat_interval < args.node_not_ready_after < args.node_lost_after):
        parser.error(
            "need 1 <= --heartbeat-interval < --node-not-ready-after < --node-lost-after "
            "(whole seconds for the interval)"
        )
    if args.readiness_timeout <= 0:
        parser.error("--readiness-timeout must be positive")
    return args


def configure_logging(level: str) -> None:
    """Structured one-line logs: time, level, logger, then key=value pairs."""
    logging.basicConfig(
        level=level.upper(),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    settings = Settings(
        readiness_timeout=timedelta(seconds=args.readiness_timeout),
        heartbeat_interval=timedelta(seconds=args.heartbeat_interval),
        liveness=Liveness(
            not_ready=timedelta(seconds=args.node_not_ready_after),
            lost=timedelta(seconds=args.node_lost_after),
        ),
    )
    plane = await start(args.listen, args.db, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"muster control plane listening on {args.listen.rsplit(':', 1)[0]}:{plane.port}",
        flush=True,
    )
    await stop.wait()
    logging.getLogger("controlplane").info("event=shutdown_requested")
    await plane.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"muster-controlplane: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
