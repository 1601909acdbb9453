"""The flags of `muster-controlplane`, grouped by topic, and their checks."""

from __future__ import annotations

import argparse
import os
import re
from datetime import timedelta
from pathlib import Path

from controlplane.assembly import DataSettings
from controlplane.core.images import DEFAULT_PULL_POLICY, PULL_POLICIES
from controlplane.store.factory import parse_store_url, store_directory
from muster.common.cli import OneLineParser
from muster.common.clientconfig import default_state_dir
from muster.common.net import host_of, is_loopback

DEFAULT_LISTEN = "127.0.0.1:50051"

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
    _add_listening_flags(parser)
    _add_security_flags(parser)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    _add_ha_flags(parser)
    _add_liveness_flags(parser)
    _add_side_listener_flags(parser)
    _add_stream_limit_flags(parser)
    _add_retention_flags(parser)
    args = parser.parse_args(argv)
    _check_number_flags(parser, args)
    _check_security_flags(parser, args)
    args.db = args.db or str(args.state_dir / "controlplane.db")
    try:
        parse_store_url(args.db)
    except ValueError as exc:
        parser.error(str(exc))
    args.agent_listen = args.agent_listen or default_agent_listen(args.listen)
    return args


def _add_listening_flags(parser: argparse.ArgumentParser) -> None:
    """Where it listens and keeps its state."""
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


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    """TLS, or plaintext on loopback."""
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no authentication; only allowed on loopback --listen and --data-listen "
        "addresses",
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


def _add_ha_flags(parser: argparse.ArgumentParser) -> None:
    """Several control planes sharing one database."""
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


def _add_liveness_flags(parser: argparse.ArgumentParser) -> None:
    """Readiness, pulls, node liveness and how many runs may wait."""
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


def _add_side_listener_flags(parser: argparse.ArgumentParser) -> None:
    """Metrics and the data plane (buffers' bytes)."""
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


def _add_stream_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Watch and log streams open at once."""
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


def _add_retention_flags(parser: argparse.ArgumentParser) -> None:
    """How long finished runs and how many log bytes are kept."""
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


def _check_number_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Limits, liveness, readiness and lease within their ranges."""
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


def _check_security_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Plaintext only on loopback, and only when asked for; PKI files complete."""
    if args.insecure:
        # Every listener --insecure turns to plaintext: the API (which then also
        # serves agents) and the data plane (HTTP instead of HTTPS). Metrics are
        # plaintext with or without --insecure, hold only aggregate counts and are
        # off unless an address is named (docs/security.md), so they are not checked.
        plaintext = [("--listen", args.listen)]
        if args.data_listen and args.data_listen != "off":
            plaintext.append(("--data-listen", args.data_listen))
        for flag, address in plaintext:
            if not is_loopback(address):
                parser.error(
                    f"refusing to serve plaintext on {address} ({flag}): --insecure is only "
                    "allowed on loopback addresses (127.0.0.1, ::1, localhost); drop --insecure "
                    "to use TLS"
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
