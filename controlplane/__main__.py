"""`muster-controlplane` / `python -m controlplane`: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from controlplane.core.errors import StoreUnavailable
from controlplane.core.nodes import Liveness
from controlplane.flags import data_settings, parse_args
from controlplane.security.tls import SecurityConfig
from controlplane.server import ControlPlane, start
from controlplane.services.leadership import Leadership, LeaseSettings
from controlplane.services.orchestrator import Settings
from controlplane.store.base import SchemaTooNew
from controlplane.store.factory import migrate_store, parse_store_url
from muster.common.cli import OneLineParser
from muster.common.gc_tuning import tune_gc

T = TypeVar("T")
EXIT_DEPOSED = 3
"""Exit status of a leader that lost its lease: its service manager starts it again, as a
follower (crash-only, like Kubernetes' controller managers)."""


def configure_logging(level: str) -> None:
    """Structured one-line logs: time, level, logger, then key=value pairs."""
    logging.basicConfig(
        level=level.upper(),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """The orchestrator's settings from the command line."""
    return Settings(
        readiness_timeout=timedelta(seconds=args.readiness_timeout),
        heartbeat_interval=timedelta(seconds=args.heartbeat_interval),
        liveness=Liveness(
            not_ready=timedelta(seconds=args.node_not_ready_after),
            lost=timedelta(seconds=args.node_lost_after),
        ),
        default_pull_policy=args.default_pull_policy,
        max_pending_runs=args.max_pending_runs,
        max_streams=args.max_streams,
        max_watchers_per_run=args.max_watchers_per_run,
        retain_finished=args.retain_finished,
        max_log_bytes_per_run=args.max_log_bytes_per_run,
    )


def security_from(args: argparse.Namespace) -> SecurityConfig | None:
    """TLS and authentication settings (None: --insecure)."""
    if args.insecure:
        return None
    return SecurityConfig(
        state_dir=args.state_dir,
        agent_listen=args.agent_listen,
        extra_names=tuple(args.tls_san),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
    )


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    plane = await start(
        args.listen,
        args.db,
        settings_from(args),
        security_from(args),
        data=data_settings(args),
        metrics_listen=args.metrics_listen,
        lease=LeaseSettings(duration=args.lease_seconds),
        advertise=args.advertise_address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _announce(args, plane)
    leadership = plane.leadership
    assert leadership is not None
    await _until_stopped_or_deposed(leadership, stop)
    if leadership.deposed.is_set() and not stop.is_set():
        print(
            f"muster-controlplane: lost the leadership (epoch {leadership.epoch}): "
            f"{leadership.reason}; exiting so that it starts again as a follower",
            file=sys.stderr,
            flush=True,
        )
        await plane.stop(grace=0)
        sys.exit(EXIT_DEPOSED)
    logging.getLogger("controlplane").info("event=shutdown_requested")
    await plane.stop()


def _announce(args: argparse.Namespace, plane: ControlPlane) -> None:
    """Say on stdout where it listens, how it is secured and whether it leads."""
    host = args.listen.rsplit(":", 1)[0]
    buffers = f"buffers on {plane.dataplane.base_url}; " if plane.dataplane else ""
    if plane.secure:
        agent_host = args.agent_listen.rsplit(":", 1)[0]
        detail = (
            f"(TLS; agents on {agent_host}:{plane.agent_port} with mTLS; {buffers}"
            f"admin credentials in {plane.admin_file})"
        )
    else:
        detail = f"(INSECURE: plaintext, no authentication; {buffers.rstrip('; ')})"
    print(f"muster control plane listening on {host}:{plane.port} {detail}", flush=True)
    leadership = plane.leadership
    assert leadership is not None
    if leadership.leading:
        print(f"leading (epoch {leadership.epoch})", flush=True)
    else:
        print(f"following: {leadership.hint()}", flush=True)


async def _until_stopped_or_deposed(leadership: Leadership, stop: asyncio.Event) -> None:
    """Wait for a signal or the loss of the lease; a follower says when it is elected."""
    stopped = asyncio.ensure_future(stop.wait())
    deposed = asyncio.ensure_future(leadership.deposed.wait())
    elected = asyncio.ensure_future(leadership.elected.wait())
    if not leadership.leading:
        await asyncio.wait({stopped, deposed, elected}, return_when=asyncio.FIRST_COMPLETED)
        if elected.done() and not stop.is_set():
            print(f"leading (epoch {leadership.epoch})", flush=True)
    await asyncio.wait({stopped, deposed}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in (stopped, deposed, elected):
        waiter.cancel()


def migrate_main(argv: list[str]) -> None:
    """`muster-controlplane migrate --db URL`: bring the store's schema up to
    date and exit (for operators who upgrade the database before the servers)."""
    parser = OneLineParser(
        prog="muster-controlplane migrate",
        description="apply the store's schema migrations and exit",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("MUSTER_DB") or None,
        required=not os.environ.get("MUSTER_DB"),
        help="the store: PATH, sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    try:
        parse_store_url(args.db)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level)
    before, after = _run_or_exit(migrate_store(args.db))
    if before == after:
        print(f"store schema is up to date (version {after})")
    else:
        print(f"store schema migrated from version {before} to {after}")


def backup_main(argv: list[str]) -> None:
    """`muster-controlplane backup --db URL OUT`: a consistent copy of a SQLite
    store, taken while the control plane runs (SQLite's online backup API).
    PostgreSQL is backed up with its own tools: the guidance, and exit 2."""
    parser = OneLineParser(
        prog="muster-controlplane backup",
        description="copy the store to OUT while the control plane runs (SQLite)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get("MUSTER_DB") or None,
        required=not os.environ.get("MUSTER_DB"),
        help="the store: PATH or sqlite:///PATH",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the backup file to write (new)")
    args = parser.parse_args(argv)
    try:
        parsed = parse_store_url(args.db)
    except ValueError as exc:
        parser.error(str(exc))
    if parsed.kind == "postgresql":
        from controlplane.store.postgres import redact

        print(
            "muster-controlplane: PostgreSQL is backed up with its own tools, while control "
            f"planes run: pg_dump -Fc -d '{redact(args.db)}' -f {args.out}; restore into an "
            "empty database with pg_restore -d URL FILE (the cluster id comes with it). "
            "See README, High availability",
            file=sys.stderr,
        )
        sys.exit(2)
    if parsed.kind == "memory" or parsed.target == ":memory:":
        parser.error(f"--db {args.db} keeps nothing to back up")
    try:
        pages = sqlite_backup(Path(parsed.target), args.out)
    except (OSError, sqlite3.Error) as exc:
        print(f"muster-controlplane: error: backup failed: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"backed up {parsed.target} to {args.out} ({pages} pages)")


def sqlite_backup(source: Path, out: Path) -> int:
    """Copy a live SQLite database page by page (a consistent snapshot even
    while the control plane writes); the copy is written beside `out` and
    renamed into place, so `out` is never half a database. Returns the pages."""
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new file")
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(partial, out)
    return pages


def _run_or_exit(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`; a store or address problem is one line on stderr and exit 1."""
    try:
        return asyncio.run(coro)
    except (OSError, StoreUnavailable, SchemaTooNew) as exc:
        print(f"muster-controlplane: error: {exc}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "migrate":
        migrate_main(argv[1:])
        return
    if argv and argv[0] == "backup":
        backup_main(argv[1:])
        return
    args = parse_args(argv)
    configure_logging(args.log_level)
    tune_gc()
    _run_or_exit(serve(args))


if __name__ == "__main__":
    main()
