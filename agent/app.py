"""Wiring: config -> runtime + supervisor + connection, with graceful shutdown.

SIGTERM/SIGINT stop the agent but leave every container running: a restarted
agent re-adopts them from their labels, so an agent upgrade never interrupts
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal

import grpc

from agent.buffer_copies import BufferCopies
from agent.config import AgentConfig
from agent.connection import (
    CHANNEL_OPTIONS,
    AddressedChannels,
    AgentConnection,
    Backoff,
    Identity,
)
from agent.credentials import CredentialStore, NodeCredentials, Renewer, ensure_credentials
from agent.leaders import EpochGuard
from agent.logutil import log
from agent.metrics import AgentMetrics
from agent.pulls import AuthFile, Puller
from agent.runtime import Runtime
from agent.runtime_podman import PodmanRuntime
from agent.supervisor import Supervisor
from muster.common.leaders import split_addresses
from muster.common.metrics import MetricsEndpoint

_log = logging.getLogger(__name__)


def make_runtime(config: AgentConfig) -> PodmanRuntime:
    """The Podman runtime described by ``config``."""
    return PodmanRuntime(
        node_name=config.node_name,
        url=config.podman_url,
        network_name=config.network,
        network_mode=config.network_mode,
        advertise_address=config.advertise_address,
        publish_address=config.publish_address,
        port_range=config.port_range,
        pids_limit=config.pids_limit,
        log_max_size=config.container_log_max_size,
        log_files=config.log_reader == "auto",
    )


def make_identity(config: AgentConfig) -> Identity:
    """The node description sent in Register."""
    return Identity(
        node_name=config.node_name,
        pools=config.pools,
        labels=dict(config.labels),
        cpu_millis=config.cpu_millis,
        memory_bytes=config.memory_bytes,
        gpus=config.gpus,
        gpu_devices=config.gpu_devices,
        advertise_address=config.advertise_address,
        agent_version=config.agent_version,
        network_mode=config.network_mode,
        network_name=config.network,
    )


async def _ensure_network(runtime: Runtime, stop: asyncio.Event, backoff: Backoff) -> None:
    """Create the run network, retrying while Podman is unreachable."""
    rng = random.Random()
    attempt = 0
    while not stop.is_set():
        try:
            await runtime.ensure_network()
            return
        except Exception as exc:
            delay = backoff.delay(attempt, rng)
            attempt += 1
            log(_log, logging.ERROR, "podman_unavailable", error=exc, retry_in=f"{delay:.2f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


class SecureChannels:
    """mTLS channels with the node's current certificate (swapped on renewal)."""

    def __init__(self, creds: NodeCredentials) -> None:
        self.creds = creds

    def __call__(self, address: str | None = None) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            address or self.creds.agent_server,
            self.creds.channel_credentials(),
            options=CHANNEL_OPTIONS,
        )

    def renewed(self, creds: NodeCredentials) -> None:
        """Use `creds` from the next connection on."""
        self.creds = creds


def agent_addresses(config: AgentConfig, joined_at: str) -> list[str]:
    """Every control plane's agent address, the one joined at first: the
    --agent-server list if given, else each --server host with the agent
    port learned when joining (control planes of one cluster share it)."""
    if config.agent_server:
        return split_addresses(config.agent_server)
    port = joined_at.rsplit(":", 1)[-1]
    derived = [f"{server.rsplit(':', 1)[0]}:{port}" for server in split_addresses(config.server)]
    return split_addresses(",".join([joined_at, *derived]))


async def _secure_channels(
    config: AgentConfig, stop: asyncio.Event, backoff: Backoff
) -> tuple[AddressedChannels, Renewer, list[str]] | None:
    """Join if needed (through the first --server, following a follower's hint
    to the leader, which alone admits joins);
    None when stopped before the identity was ready."""
    store = CredentialStore(config.identity_dir)
    rng = random.Random()
    agent_servers = split_addresses(config.agent_server or "")
    creds = await ensure_credentials(
        store,
        config.node_name,
        config.server,
        config.ca_pem,
        config.join_token,
        agent_servers[0] if agent_servers else None,
        stop,
        lambda attempt: backoff.delay(attempt, rng),
    )
    if creds is None:
        return None
    channels = SecureChannels(creds)
    return (
        channels,
        Renewer(store, creds, channels.renewed),
        agent_addresses(config, creds.agent_server),
    )


DEFAULT_FENCE_AFTER = 30.0
"""Fencing period until the control plane has told its own (its default Lost period)."""


async def fence_when_cut(
    connection: AgentConnection,
    supervisor: Supervisor,
    fence_after: float | None,
    check_every: float = 1.0,
) -> None:
    """Self-fencing (Nomad's stop_on_client_after): once the agent has been cut
    off from the control plane for as long as the control plane keeps a silent
    node before declaring it Lost (and failing its runs), stop and remove the
    containers of those runs here, so that nothing outlives its run's end.

    `fence_after`: an explicit period (0 = never); None: the control plane's."""
    fenced = False
    while True:
        await asyncio.sleep(check_every)
        cut = connection.cut_for()
        if cut == 0:
            fenced = False
            continue
        limit = fence_after if fence_after is not None else connection.fence_after
        limit = DEFAULT_FENCE_AFTER if limit is None else limit
        if not fenced and limit > 0 and cut >= limit:
            fenced = True
            runs = supervisor.fence()
            log(
                _log,
                logging.WARNING,
                "self_fenced",
                cut_off_seconds=f"{cut:.0f}",
                runs=",".join(map(str, runs)) or "none",
            )


async def run_agent(
    config: AgentConfig,
    *,
    runtime: Runtime | None = None,
    stop: asyncio.Event | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    owned_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if owned_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    runtime = runtime or make_runtime(config)
    metrics = AgentMetrics() if config.metrics_listen else None
    if metrics is not None:
        runtime = metrics.timed_runtime(runtime)
    backoff = backoff or Backoff(maximum=config.reconnect_max_seconds)
    supervisor = make_supervisor(config, runtime)
    _log_start(config)
    tasks: list[asyncio.Task[None]] = []
    endpoint: MetricsEndpoint | None = None
    try:
        if metrics is not None:
            metrics.watch(supervisor.state_counts)
            endpoint = MetricsEndpoint(metrics.registry)
            port = await endpoint.start(config.metrics_listen)
            log(_log, logging.INFO, "metrics_listening", port=port)
        connected = await _connection(config, supervisor, stop, backoff)
        if connected is None:
            return
        connection, renewer = connected
        await _ensure_network(runtime, stop, backoff)
        tasks.append(asyncio.create_task(supervisor.watch(), name="agent-watch"))
        tasks.append(
            asyncio.create_task(
                fence_when_cut(connection, supervisor, config.fence_after), name="agent-fence"
            )
        )
        if renewer is not None:
            tasks.append(asyncio.create_task(renewer.run(), name="agent-renew"))
        await connection.run(stop)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if endpoint is not None:
            await endpoint.stop()
        await supervisor.close()
        await runtime.close()
        if owned_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log(_log, logging.INFO, "agent_stopped", node=config.node_name)


def make_supervisor(config: AgentConfig, runtime: Runtime) -> Supervisor:
    """The supervisor of this node's containers, with its image puller."""
    puller = Puller(
        runtime,
        node_name=config.node_name,
        max_concurrent=config.max_concurrent_pulls,
        timeout=config.pull_timeout,
        auth_file=AuthFile(config.registry_auth_file) if config.registry_auth_file else None,
        insecure_registries=config.insecure_registries,
    )
    return Supervisor(
        runtime,
        poll_interval=config.poll_interval,
        probe_interval=config.probe_interval,
        puller=puller,
        copies=BufferCopies(config.pipes_root),
    )


def _log_start(config: AgentConfig) -> None:
    log(
        _log,
        logging.INFO,
        "agent_starting",
        node=config.node_name,
        server=config.server,
        network=config.network,
        network_mode=config.network_mode,
        version=config.agent_version,
        max_concurrent_pulls=config.max_concurrent_pulls,
        pull_timeout=f"{config.pull_timeout:g}s",
        registry_auth_file=config.registry_auth_file,
        insecure_registries=",".join(config.insecure_registries) or None,
    )
    if config.gpus or config.gpu_notes:
        log(_log, logging.INFO, "gpus", count=config.gpus, devices=",".join(config.gpu_devices))
    for note in config.gpu_notes:
        log(_log, logging.WARNING, "gpu_discovery", note=note)


async def _connection(
    config: AgentConfig, supervisor: Supervisor, stop: asyncio.Event, backoff: Backoff
) -> tuple[AgentConnection, Renewer | None] | None:
    """The connection to the control plane, with the certificate renewer unless
    --insecure; None when stopped before the node had its credentials."""
    channel_to: AddressedChannels | None = None
    renewer: Renewer | None = None
    servers = config.server
    if not config.insecure:
        secured = await _secure_channels(config, stop, backoff)
        if secured is None:
            return None
        channel_to, renewer, addresses = secured
        servers = ",".join(addresses)
    connection = AgentConnection(
        servers,
        make_identity(config),
        supervisor,
        backoff=backoff,
        channel_to=channel_to,
        epochs=EpochGuard(config.epoch_dir),
    )
    return connection, renewer
