"""`muster-controlplane` / `python -m controlplane`: run the control plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from controlplane.core.errors import StoreUnavailable
from controlplane.core.images import DEFAULT_PULL_POLICY, PULL_POLICIES
from controlplane.core.nodes import Liveness
from controlplane.security.tls import SecurityConfig
from controlplane.server import DataSettings, start
from controlplane.services.leadership import LeaseSettings
from controlplane.services.orchestrator import Settings
from controlplane.store.base import SchemaTooNew
from controlplane.store.factory import migrate_store, parse_store_url, store_directory
from muster.common.cli import OneLineParser
from muster.common.clientconfig import default_state_dir
from muster.common.net import host_of, is_loopback

T = TypeVar("T")
DEFAULT_LISTEN = "127.0.0.1:50051"
EXIT_DEPOSED = 3
"""Exit status of a leader that lost its lease: its service manager starts it again, as a
follower (crash-only, like Kubernetes' controller managers)."""
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?$", re.IGNORECASE)


def duration(text: str) -> timedelta:
    """`30d`, `12h`, `1h30m`, `90s` or plain seconds; `0` is zero."""
    text = text.strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration; use e.g. 30d, 12h, 90m, 0")
    d, h, m, s = (int(g or 0) for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


def size(text: str) -> int:
    """Bytes from `1GiB`, `500MiB`, `2G`, `64Ki` or plain bytes; `0` is zero."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size; use e.g. 1GiB, 500MiB, 0")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    scale = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    scale.update({"KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4})
    return int(number * scale[unit])


DEFAULT_AGENT_PORT = 50052


def default_agent_listen(listen: str) -> str:
    """The agent address beside the API address: same host, port 50052 (0 stays 0)."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{0 if port == '0' else DEFAULT_AGENT_PORT}"


DEFAULT_DATA_PORT = 50053


def default_data_listen(listen: str) -> str:
    """The data plane's address beside the API's: same host, port 50053 (0 stays 0)."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{0 if port == '0' else DEFAULT_DATA_PORT}"


def data_settings(args: argparse.Namespace) -> DataSettings | None:
    """The embedded data plane's settings (None: --data-listen off). Its blobs
    and key live in the state directory, or beside the database with --insecure."""
    if args.data_listen == "off":
        return None
    home = (store_directory(args.db) or args.state_dir) if args.insecure else args.state_dir
    return DataSettings(
        listen=args.data_listen or default_data_listen(args.listen),
        root=args.data_dir or home / "buffers",
        key_file=home / "dataplane.key",
        advertise=args.data_advertise,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = OneLineParser(prog="muster-controlplane", description="muster control plane (gRPC)")
    parser.add_argument(
        "--listen",
        default=os.environ.get("MUSTER_LISTEN", DEFAULT_LISTEN),
        help=f"HOST:PORT to serve gRPC on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("MUSTER_STATE_DIR") or default_state_dir()),
        help="where the database (unless --db), the cluster CA and admin.json live "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("MUSTER_DB") or None,
        metavar="URL",
        help="the store: a SQLite file (PATH or sqlite:///PATH; default "
        "STATE_DIR/controlplane.db), postgresql://USER@HOST:PORT/DB, or memory: (tests)",
    )
    parser.add_argument(
        "--agent-listen",
        default=os.environ.get("MUSTER_AGENT_LISTEN") or None,
        metavar="HOST:PORT",
        help="HOST:PORT for node agents (mTLS); default: the --listen host, port 50052",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no authentication; only allowed on a loopback --listen address",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="bring your own server certificate chain (PEM)"
    )
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert (PEM)")
    parser.add_argument(
        "--client-ca",
        type=Path,
        help="also accept node certificates signed by this CA (PEM), besides the cluster CA",
    )
    parser.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--advertise-address",
        default=os.environ.get("MUSTER_ADVERTISE_ADDRESS", ""),
        metavar="HOST",
        help="the host clients and agents reach this control plane at, recorded with the "
        "lease when it leads so that the others can name it (default: the --listen host; "
        "loopback for a wildcard)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="control planes sharing a PostgreSQL database: how long the leader's lease lasts; "
        "a follower takes over this long after the leader stopped renewing (default 5)",
    )
    parser.add_argument(
        "--readiness-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="fail a run whose worker is not ready this long after its container started "
        "(pulling its image does not count)",
    )
    parser.add_argument(
        "--default-pull-policy",
        choices=PULL_POLICIES,
        default=DEFAULT_PULL_POLICY,
        help="when nodes pull the image of a run that names no pull policy: missing (pull "
        "only what a node lacks), always, never (default: %(default)s)",
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
    parser.add_argument(
        "--max-pending-runs",
        type=int,
        default=10_000,
        metavar="N",
        help="runs that may wait Pending at once; more are refused with RESOURCE_EXHAUSTED "
        "(default: %(default)s; 0: no limit)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--data-listen",
        metavar="HOST:PORT",
        default="",
        help="HOST:PORT of the data plane, which serves buffers' bytes over HTTP(S) "
        "(default: the --listen host, port 50053; 'off': no data plane)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where buffers' bytes are kept (default: STATE_DIR/buffers)",
    )
    parser.add_argument(
        "--data-advertise",
        metavar="HOST",
        default="",
        help="the host name or address put in buffer access URLs, as clients and agents "
        "reach the data plane (default: the --data-listen host; loopback for a wildcard)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        metavar="N",
        help="watch and log streams open at once, in all (default: %(default)s)",
    )
    parser.add_argument(
        "--max-watchers-per-run",
        type=int,
        default=100,
        metavar="N",
        help="watch and log streams open at once on one run (default: %(default)s)",
    )
    parser.add_argument(
        "--retain-finished",
        type=duration,
        default=timedelta(days=30),
        metavar="DURATION",
        help="delete finished runs, their logs and tags this long after they finished "
        "(e.g. 30d, 12h; default 30d; 0: keep them forever)",
    )
    parser.add_argument(
        "--max-log-bytes-per-run",
        type=size,
        default=1024**3,
        metavar="SIZE",
        help="a run's stored logs beyond this lose their oldest lines, and one line says how "
        "many (e.g. 1GiB, 500MiB; default 1GiB; 0: no limit)",
    )
    args = parser.parse_args(argv)
    if args.max_pending_runs < 0 or args.max_streams < 1 or args.max_watchers_per_run < 1:
        parser.error(
            "--max-pending-runs must be 0 or more; --max-streams and --max-watchers-per-run "
            "at least 1"
        )
    if not (1 <= args.heartbeat_interval < args.node_not_ready_after < args.node_lost_after):
        parser.error(
            "need 1 <= --heartbeat-interval < --node-not-ready-after < --node-lost-after "
            "(whole seconds for the interval)"
        )
    if args.readiness_timeout <= 0:
        parser.error("--readiness-timeout must be positive")
    if args.lease_seconds < 2:
        parser.error("--lease-seconds must be at least 2 (it is renewed every second)")
    _check_security_flags(parser, args)
    args.db = args.db or str(args.state_dir / "controlplane.db")
    try:
        parse_store_url(args.db)
    except ValueError as exc:
        parser.error(str(exc))
    args.agent_listen = args.agent_listen or default_agent_listen(args.listen)
    return args


def _check_security_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Plaintext only on loopback, and only when asked for; PKI files complete."""
    if args.insecure:
        if not is_loopback(args.listen):
            parser.error(
                f"refusing to serve plaintext on {args.listen}: --insecure is only allowed on a "
                "loopback address (127.0.0.1, ::1, localhost); drop --insecure to use TLS"
            )
        if args.tls_cert or args.tls_key or args.client_ca:
            parser.error("--insecure cannot be combined with --tls-cert, --tls-key or --client-ca")
        return
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    for flag in ("tls_cert", "tls_key", "client_ca"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')} {path}: no such file")
    if host_of(args.listen) == "localhost":
        args.listen = args.listen.replace("localhost", "127.0.0.1", 1)


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
        default_pull_policy=args.default_pull_policy,
        max_pending_runs=args.max_pending_runs,
        max_streams=args.max_streams,
        max_watchers_per_run=args.max_watchers_per_run,
        retain_finished=args.retain_finished,
        max_log_bytes_per_run=args.max_log_bytes_per_run,
    )
    security = (
        None
        if args.insecure
        else SecurityConfig(
            state_dir=args.state_dir,
            agent_listen=args.agent_listen,
            extra_names=tuple(args.tls_san),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
        )
    )
    plane = await start(
        args.listen,
        args.db,
        settings,
        security,
        data=data_settings(args),
        metrics_listen=args.metrics_listen,
        lease=LeaseSettings(duration=args.lease_seconds),
        advertise=args.advertise_address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    _run_or_exit(serve(args))


if __name__ == "__main__":
    main()
