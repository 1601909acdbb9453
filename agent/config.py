"""Agent settings and the command line that produces them.

Flag errors print one clear line and exit with status 2 (no usage dump), so a
mistyped flag in a compose file or unit is obvious in the log.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from agent import __version__
from agent.cdi import DEFAULT_KIND, DEFAULT_SPEC_DIRS, CdiError, discover, select_gpus
from agent.ports import parse_port_range
from agent.pulls import DEFAULT_MAX_CONCURRENT_PULLS, DEFAULT_PULL_TIMEOUT, AuthFile, AuthFileError
from agent.quantity import parse_cpu_millis, parse_memory_bytes
from agent.runtime import NetworkMode
from agent.runtime_podman import (
    DEFAULT_LOG_MAX_SIZE,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_URL,
    MIN_LOG_MAX_SIZE,
)
from muster.common.cli import OneLineParser
from muster.common.clientconfig import data_home

DEFAULT_SERVER = "127.0.0.1:50051"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to run; built from flags or directly in tests."""

    node_name: str
    server: str = DEFAULT_SERVER
    pools: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    podman_url: str = DEFAULT_URL
    network: str = "muster"
    network_mode: NetworkMode = "bridge"
    advertise_address: str = "127.0.0.1"
    publish_address: str | None = None
    port_range: tuple[int, int] = (30000, 32767)
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_devices: tuple[str, ...] = ()
    """CDI device names behind ``gpus`` (empty: a count without devices)."""
    gpu_notes: tuple[str, ...] = ()
    """Warnings about GPU discovery, logged at start."""
    poll_interval: float = 0.5
    probe_interval: float = 0.2
    reconnect_max_seconds: float = 5.0
    log_level: str = "INFO"
    agent_version: str = __version__
    fence_after: float | None = None
    insecure: bool = False
    state_dir: Path | None = None
    ca_pem: bytes | None = None
    join_token: str = ""
    agent_server: str | None = None
    pids_limit: int = DEFAULT_PIDS_LIMIT
    container_log_max_size: int = DEFAULT_LOG_MAX_SIZE
    log_reader: str = "auto"
    """How run containers' logs are read: ``auto`` (their log files where this agent can
    read them, else Podman's log API) or ``api`` (always the API)."""
    registry_auth_file: Path | None = None
    """containers-auth.json with this node's own registry credentials."""
    insecure_registries: tuple[str, ...] = ()
    """Registries (``host:port``) pulled without TLS verification."""
    max_concurrent_pulls: int = DEFAULT_MAX_CONCURRENT_PULLS
    pull_timeout: float = DEFAULT_PULL_TIMEOUT
    pipe_dir: Path | None = None
    """Where jobs' buffer FIFOs are made (None: ``pipes`` in the state directory)."""
    metrics_listen: str = ""
    """HOST:PORT of the Prometheus /metrics endpoint ("": none)."""

    @property
    def identity_dir(self) -> Path:
        """Where the node's key and certificate live."""
        return self.state_dir or default_state_dir(self.node_name)

    @property
    def epoch_dir(self) -> Path | None:
        """Where the newest leader epoch is kept: the state directory, unless
        an insecure agent was given none (tests; then only in memory)."""
        return None if self.insecure and self.state_dir is None else self.identity_dir

    @property
    def pipes_root(self) -> Path:
        """One directory per job container with buffers, bind-mounted into it, so
        it must be a path Podman sees as the agent does."""
        return self.pipe_dir or self.identity_dir / "pipes"


def default_state_dir(node_name: str) -> Path:
    """One directory per node name, so several agents on one machine never share."""
    return data_home() / "muster" / "agents" / node_name


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


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    """Parse flags into an :class:`AgentConfig`; exits 2 with one line on errors."""
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not ns.node_name.strip():
        parser.error("--node-name must not be empty")
    if not ns.server.strip():
        parser.error("--server must not be empty")
    join_token = ns.join_token.strip()
    if ns.join_token_file is not None:
        try:
            join_token = ns.join_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--join-token-file {ns.join_token_file}: {exc.strerror}")
    if ns.insecure and (join_token or ns.ca_cert):
        parser.error("--insecure cannot be combined with --join-token or --ca-cert")
    if ns.registry_auth_file is not None:
        try:
            AuthFile(ns.registry_auth_file)
        except AuthFileError as exc:
            parser.error(f"--registry-auth-file {exc}")
    spec_dirs = tuple(ns.cdi_spec_dirs or DEFAULT_SPEC_DIRS)
    found = discover(spec_dirs)
    try:
        offer = select_gpus(ns.gpus, ns.gpu_cdi_kind, found, spec_dirs)
    except CdiError as exc:
        parser.error(str(exc))
    return AgentConfig(
        fence_after=ns.fence_after,
        insecure=ns.insecure,
        state_dir=ns.state_dir,
        pipe_dir=ns.pipe_dir,
        metrics_listen=ns.metrics_listen,
        ca_pem=ns.ca_cert,
        join_token=join_token,
        agent_server=ns.agent_server,
        node_name=ns.node_name,
        server=ns.server,
        pools=tuple(dict.fromkeys(ns.pools)),
        labels=dict(ns.labels),
        podman_url=ns.podman_url,
        network=ns.network,
        network_mode=ns.network_mode,
        advertise_address=ns.advertise_address,
        publish_address=ns.publish_address,
        port_range=ns.port_range,
        cpu_millis=ns.cpus if ns.cpus is not None else (psutil.cpu_count() or 1) * 1000,
        memory_bytes=ns.memory if ns.memory is not None else psutil.virtual_memory().total,
        gpus=offer.count,
        gpu_devices=offer.devices,
        gpu_notes=(*found.warnings, *([offer.note] if offer.note else [])),
        pids_limit=ns.pids_limit,
        container_log_max_size=ns.container_log_max_size,
        log_reader=ns.log_reader,
        registry_auth_file=ns.registry_auth_file,
        insecure_registries=tuple(dict.fromkeys(ns.insecure_registries)),
        max_concurrent_pulls=ns.max_concurrent_pulls,
        pull_timeout=ns.pull_timeout,
        poll_interval=ns.poll_interval,
        log_level=ns.log_level,
    )
