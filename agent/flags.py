"""The ``muster-agent`` flags, grouped by topic, and their value checks.

Flag errors print one clear line and exit with status 2 (no usage dump), so a
mistyped flag in a compose file or unit is obvious in the log.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from pathlib import Path

from agent import __version__
from agent.cdi import DEFAULT_KIND
from agent.podman_create import DEFAULT_LOG_MAX_SIZE, DEFAULT_PIDS_LIMIT, MIN_LOG_MAX_SIZE
from agent.ports import parse_port_range
from agent.pulls import DEFAULT_MAX_CONCURRENT_PULLS, DEFAULT_PULL_TIMEOUT
from agent.quantity import parse_cpu_millis, parse_memory_bytes
from agent.runtime_podman import DEFAULT_URL
from muster.common.cli import OneLineParser

DEFAULT_SERVER = "127.0.0.1:50051"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label '{text}' must look like KEY=VALUE")
    return key, value


def _port_range(text: str) -> tuple[int, int]:
    try:
        return parse_port_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_quantity(parse: Callable[[str], int], what: str) -> Callable[[str], int]:
    """An argparse type: a quantity parsed by `parse` that must be positive."""

    def convert(text: str) -> int:
        try:
            value = parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} '{text}' must be positive")
        return value

    return convert


_cpu = _positive_quantity(parse_cpu_millis, "cpu")
_memory = _positive_quantity(parse_memory_bytes, "memory")


def _pids_limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pids limit '{text}' must be a whole number") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"pids limit '{text}' must be at least 1")
    return limit


def _log_max_size(text: str) -> int:
    try:
        size = parse_memory_bytes(text)
    except ValueError as exc:
        # parse_memory_bytes words its errors as "memory '...' ...".
        raise argparse.ArgumentTypeError("log size " + str(exc).removeprefix("memory ")) from None
    if size < MIN_LOG_MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"log size '{text}' must be at least {MIN_LOG_MAX_SIZE // 2**10}Ki"
        )
    return size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _registry_host(text: str) -> str:
    host = text.strip()
    if not host or "://" in host or "/" in host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(
            f"registry '{text}' must be HOST or HOST:PORT (no scheme, no path)"
        )
    return host


def _readable(text: str) -> bytes:
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror}") from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"'{text}' must not be negative")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``muster-agent`` command line."""
    p = OneLineParser(
        prog="muster-agent",
        description="muster node agent: runs this node's share of runs on Podman.",
    )
    _add_control_plane_flags(p)
    _add_node_local_flags(p)
    _add_identity_flags(p)
    _add_network_flags(p)
    _add_resource_flags(p)
    _add_container_log_flags(p)
    _add_pull_flags(p)
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=0.5,
        help="seconds between container state polls (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default %(default)s",
    )
    p.add_argument("--version", action="version", version=f"muster-agent {__version__}")
    return p


def _add_control_plane_flags(p: argparse.ArgumentParser) -> None:
    """Which control plane, how to join it, where the node's identity lives."""
    p.add_argument(
        "--server",
        default=os.environ.get("MUSTER_SERVER", DEFAULT_SERVER),
        help="control plane HOST:PORT, or several comma-separated (control planes sharing a "
        "database: the agent follows their leader) (env MUSTER_SERVER; default %(default)s)",
    )
    p.add_argument(
        "--agent-server",
        default=os.environ.get("MUSTER_AGENT_SERVER") or None,
        help="control plane agent address HOST:PORT (mTLS), or several comma-separated; "
        "default: learned when joining (with several --server: each host, that port)",
    )
    p.add_argument(
        "--ca-cert",
        type=_readable,
        help="cluster CA certificate (PEM) that vouches for the control plane; needed to join",
    )
    p.add_argument(
        "--join-token",
        default=os.environ.get("MUSTER_JOIN_TOKEN", ""),
        help="single-use join token (env MUSTER_JOIN_TOKEN); needed only on the first start",
    )
    p.add_argument(
        "--join-token-file", type=Path, help="read the join token from this file instead"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the node key and certificate live (default: "
        "$XDG_DATA_HOME/muster/agents/NODE_NAME)",
    )


def _add_node_local_flags(p: argparse.ArgumentParser) -> None:
    """Metrics, buffer FIFOs, self-fencing and plaintext."""
    p.add_argument(
        "--metrics-listen",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    p.add_argument(
        "--pipe-dir",
        type=Path,
        default=None,
        help="where jobs' buffer FIFOs are made; Podman mounts them from there, so an "
        "agent in a container needs a host path mounted at the same path "
        "(default: STATE_DIR/pipes)",
    )
    p.add_argument(
        "--fence-after",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="stop this node's run containers after this long cut off from the control "
        "plane (default: the control plane's --node-lost-after; 0: never)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext and no node certificate, for a control plane started with --insecure",
    )


def _add_identity_flags(p: argparse.ArgumentParser) -> None:
    """The node's name, pools and labels."""
    p.add_argument("--node-name", default=socket.gethostname(), help="default: hostname")
    p.add_argument(
        "--pool", action="append", default=[], dest="pools", help="node pool (repeatable)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        dest="labels",
        help="node label KEY=VALUE (repeatable)",
    )


def _add_network_flags(p: argparse.ArgumentParser) -> None:
    """Podman and how run containers are reached."""
    p.add_argument("--podman-url", default=DEFAULT_URL, help="Podman API (default %(default)s)")
    p.add_argument("--network", default="muster", help="Podman bridge network for run containers")
    p.add_argument(
        "--network-mode",
        choices=["bridge", "host-port"],
        default="bridge",
        help="bridge: workers reached by DNS alias; host-port: endpoints on host ports",
    )
    p.add_argument(
        "--advertise-address",
        default="127.0.0.1",
        help="address jobs use for host-port endpoints (default %(default)s)",
    )
    p.add_argument(
        "--publish-address",
        default=None,
        help="host address to bind host ports on (default: the advertise address if it is "
        "local, else 0.0.0.0)",
    )
    p.add_argument(
        "--port-range",
        type=_port_range,
        default=(30000, 32767),
        help="host ports for host-port mode, LO-HI (default 30000-32767)",
    )


def _add_resource_flags(p: argparse.ArgumentParser) -> None:
    """What this node offers and what one container may use."""
    p.add_argument("--cpus", type=_cpu, help="allocatable CPU (2, 1.5, 500m); default: all cores")
    p.add_argument("--memory", type=_memory, help="allocatable memory (4Gi, 1G); default: all RAM")
    p.add_argument(
        "--gpus",
        default=None,
        metavar="N|DEVICES",
        help="GPUs offered: a number (that many of the CDI devices found) or a comma list of "
        "CDI device names (nvidia.com/gpu=0,nvidia.com/gpu=1); default: every CDI device of "
        "--gpu-cdi-kind found",
    )
    p.add_argument(
        "--gpu-cdi-kind",
        default=DEFAULT_KIND,
        metavar="KIND",
        help="CDI device kind that counts as a GPU (default %(default)s)",
    )
    p.add_argument(
        "--cdi-spec-dir",
        action="append",
        type=Path,
        default=None,
        dest="cdi_spec_dirs",
        metavar="DIR",
        help="where to read CDI specs (repeatable; default /etc/cdi and /var/run/cdi, "
        "the directories Podman reads)",
    )
    p.add_argument(
        "--pids-limit",
        type=_pids_limit,
        default=DEFAULT_PIDS_LIMIT,
        metavar="N",
        help="most processes/threads one run container may have (default %(default)s)",
    )


def _add_container_log_flags(p: argparse.ArgumentParser) -> None:
    """Run containers' log files and how they are read."""
    p.add_argument(
        "--container-log-max-size",
        type=_log_max_size,
        default=DEFAULT_LOG_MAX_SIZE,
        metavar="SIZE",
        help=f"cap on each run container's log file (100Mi, 1G; at least "
        f"{MIN_LOG_MAX_SIZE // 2**10}Ki; default {DEFAULT_LOG_MAX_SIZE // 2**20}Mi); "
        "past it conmon starts a new file (the agent reads the old one to its end first, "
        "unless it reads through the API: then unread lines are lost)",
    )
    p.add_argument(
        "--log-reader",
        choices=("auto", "api"),
        default="auto",
        help="read run containers' output from their log files on this host where "
        "readable, else through Podman's log API (auto, the default), or always "
        "through the API (api)",
    )


def _add_pull_flags(p: argparse.ArgumentParser) -> None:
    """Image pulls: credentials, insecure registries, concurrency, timeout."""
    p.add_argument(
        "--registry-auth-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="registry credentials of this node, in containers-auth.json format (as "
        "`podman login --authfile` writes); credentials from the control plane win",
    )
    p.add_argument(
        "--insecure-registry",
        action="append",
        type=_registry_host,
        default=[],
        dest="insecure_registries",
        metavar="HOST:PORT",
        help="pull from this registry without TLS verification, e.g. a plain-HTTP test "
        "registry (repeatable); every other registry as Podman's configuration says "
        "(/etc/containers/certs.d)",
    )
    p.add_argument(
        "--max-concurrent-pulls",
        type=_positive_int,
        default=DEFAULT_MAX_CONCURRENT_PULLS,
        metavar="N",
        help="image pulls at once on this node (default %(default)s); one image is "
        "pulled once however many replicas need it",
    )
    p.add_argument(
        "--pull-timeout",
        type=_positive_float,
        default=DEFAULT_PULL_TIMEOUT,
        metavar="SECONDS",
        help="longest one image pull may take before its starts fail (default %(default)g)",
    )
