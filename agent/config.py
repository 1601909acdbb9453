"""Agent settings and how the command line (``agent/flags.py``) produces them."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from agent import __version__
from agent.cdi import DEFAULT_SPEC_DIRS, CdiError, GpuOffer, discover, select_gpus
from agent.flags import DEFAULT_SERVER, build_parser
from agent.podman_create import DEFAULT_LOG_MAX_SIZE, DEFAULT_PIDS_LIMIT
from agent.pulls import DEFAULT_MAX_CONCURRENT_PULLS, DEFAULT_PULL_TIMEOUT, AuthFile, AuthFileError
from agent.runtime import NetworkMode
from agent.runtime_podman import DEFAULT_URL
from muster.common.clientconfig import data_home


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


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    """Parse flags into an :class:`AgentConfig`; exits 2 with one line on errors."""
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not ns.node_name.strip():
        parser.error("--node-name must not be empty")
    if not ns.server.strip():
        parser.error("--server must not be empty")
    join_token = _join_token(parser, ns)
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
    return _config(ns, join_token, (*found.warnings, *([offer.note] if offer.note else [])), offer)


def _join_token(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> str:
    """--join-token, or the contents of --join-token-file."""
    join_token: str = ns.join_token.strip()
    if ns.join_token_file is not None:
        try:
            join_token = ns.join_token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--join-token-file {ns.join_token_file}: {exc.strerror}")
    return join_token


def _config(
    ns: argparse.Namespace, join_token: str, gpu_notes: tuple[str, ...], offer: GpuOffer
) -> AgentConfig:
    """The checked flags as settings; unset CPU and memory are the whole machine's."""
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
        gpu_notes=gpu_notes,
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
