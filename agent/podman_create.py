"""How the Podman runtime creates a run container: its network and its create arguments.

Networking: every run container joins the agent's bridge network (created
with DNS on if missing, :func:`ensure_network_sync`), so a job container can
always reach a worker on the same node by its hostname, which is also its
network alias. In host-port mode a worker's endpoints are additionally
published on the host ports the runtime allocated (:mod:`agent.podman_ports`).

Hardening: every run container is created with no-new-privileges, a pids
limit, Podman's default capability set minus NET_RAW, and a size cap on its
k8s-file log. podman-py's ``security_opt`` is *not* the way to the first: it
sends the list as SELinux label options, which Podman ignores without SELinux
(the container then runs with ``NoNewPrivs: 0``), so :func:`create_kwargs`
sets the specgen field ``no_new_privileges`` instead. The log cap is enforced
by conmon: a write that would take the file past the cap first replaces it
with an empty file. How the log readers meet that:
:mod:`agent.podman_logs_reader`.

GPUs: a replica's CDI device names (``nvidia.com/gpu=0``) go through
podman-py's ``devices``, which sends each as a specgen device path. Podman
4.3 takes a qualified CDI name there for a CDI device and, when the
container starts, applies that device's edits from the specs in
``/etc/cdi`` and ``/var/run/cdi`` (its device nodes, variables, mounts); a
name no spec defines fails the start ("unresolvable CDI devices").

Everything here blocks: call it from the runtime's executor threads only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from podman.errors import APIError

from agent.logutil import log
from agent.podman_client import explain
from agent.runtime import ContainerSpec, RuntimeFailure, container_labels
from muster.common.pipes import PIPE_DIR

CPU_PERIOD_US = 100_000
DEFAULT_PIDS_LIMIT = 4096
"""Processes (threads count too) one run container may have at once."""
DEFAULT_LOG_MAX_SIZE = 100 * 2**20
"""Bytes a run container's log file may grow to before conmon truncates it."""
MIN_LOG_MAX_SIZE = 16 * 2**10
"""Smallest accepted log cap: more than one conmon write (8 KiB plus framing)."""
DROPPED_CAPABILITIES = ("CAP_NET_RAW",)
"""Dropped from Podman's default capability set (raw sockets: spoofing, sniffing)."""
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateSettings:
    """What every run container of one node is created with, besides its spec."""

    node: str
    network: str
    publish_address: str
    stop_timeout: int
    pids_limit: int = DEFAULT_PIDS_LIMIT
    log_max_size: int = DEFAULT_LOG_MAX_SIZE


def check_limits(pids_limit: int, log_max_size: int) -> None:
    """Refuse a pids limit below 1 and a log cap below :data:`MIN_LOG_MAX_SIZE`."""
    if pids_limit < 1:
        raise ValueError(f"pids_limit must be at least 1, not {pids_limit}")
    if log_max_size < MIN_LOG_MAX_SIZE:
        raise ValueError(
            f"log_max_size must be at least {MIN_LOG_MAX_SIZE} bytes, not {log_max_size}"
        )


def ensure_network_sync(client: Any, network: str) -> None:
    """Create the bridge network ``network`` with DNS if missing (another agent
    creating it first is fine); warn about an existing one without DNS."""
    if client.networks.exists(network):
        attrs = client.networks.get(network).attrs
        if not attrs.get("dns_enabled", True):
            log(
                _log,
                logging.WARNING,
                "network_without_dns",
                network=network,
                hint="workers will not resolve by hostname; use a network created by the agent",
            )
        return
    try:
        client.networks.create(
            network, driver="bridge", dns_enabled=True, labels={"muster.managed": "true"}
        )
        log(_log, logging.INFO, "network_created", network=network)
    except APIError as exc:
        if exc.status_code != 409:  # 409: another agent created it first
            raise RuntimeFailure(f"cannot create network '{network}': {explain(exc)}") from exc


def create_kwargs(
    spec: ContainerSpec, host_ports: dict[str, int], settings: CreateSettings
) -> dict[str, Any]:
    """podman-py's ``containers.create`` arguments for ``spec`` (publishing ``host_ports``)."""
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "hostname": spec.hostname,
        "labels": container_labels(spec, settings.node),
        "environment": dict(spec.env),
        "init": True,
        "stop_timeout": settings.stop_timeout,
        "networks": {settings.network: {"aliases": [spec.hostname]}},
        # The log reading (agent.podman_logs_reader) is built and tested on
        # k8s-file; journald, the default on systemd hosts, rate-limits.
        # ``size`` goes to Podman as bytes (conmon's --log-size-max).
        "log_config": {"Type": "k8s-file", "Config": {"size": settings.log_max_size}},
        # Hardening (module docstring). Not security_opt=["no-new-privileges"]:
        # podman-py sends that as SELinux options and Podman drops it.
        "no_new_privileges": True,
        "cap_drop": list(DROPPED_CAPABILITIES),
        "pids_limit": settings.pids_limit,
    }
    kwargs.update(_process_kwargs(spec))
    kwargs.update(_resource_kwargs(spec))
    if host_ports:
        publish = settings.publish_address
        bind = publish if publish not in ("", "0.0.0.0") else None
        kwargs["ports"] = {
            f"{spec.endpoints[name]}/tcp": (bind, hp) if bind else hp
            for name, hp in host_ports.items()
        }
    return kwargs


def _process_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """What the container runs, where, and what it sees of the node."""
    kwargs: dict[str, Any] = {}
    if spec.command:
        kwargs["entrypoint"] = list(spec.command)
    if spec.args:
        kwargs["command"] = list(spec.args)
    if spec.working_dir:
        kwargs["working_dir"] = spec.working_dir
    if spec.hosts:
        # Worker names resolve from /etc/hosts, not only through
        # aardvark-dns (which stalls under churn) or across hosts at all.
        kwargs["extra_hosts"] = dict(spec.hosts)
    if spec.pipe_dir:
        # The job's buffer FIFOs (agent.buffer_copies); "z" lets a container
        # open them on an SELinux host (Podman ignores it elsewhere).
        kwargs["mounts"] = [
            {"type": "bind", "source": spec.pipe_dir, "target": PIPE_DIR, "relabel": "z"}
        ]
    if spec.restart_always:
        # Podman restarts it whenever its process exits; a stop is final.
        kwargs["restart_policy"] = {"Name": "always"}
    return kwargs


def _resource_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """The container's devices and limits."""
    kwargs: dict[str, Any] = {}
    if spec.gpu_devices:
        # CDI names go to Podman as devices; Podman resolves them through the
        # CDI specs in /etc/cdi and /var/run/cdi (device nodes, variables).
        kwargs["devices"] = list(spec.gpu_devices)
    if spec.cpu_limit_millis > 0:
        # podman-py ignores nano_cpus; quota/period is the same limit.
        kwargs["cpu_period"] = CPU_PERIOD_US
        kwargs["cpu_quota"] = spec.cpu_limit_millis * CPU_PERIOD_US // 1000
    if spec.memory_limit_bytes > 0:
        kwargs["mem_limit"] = spec.memory_limit_bytes
    if spec.shm_size_bytes > 0:
        kwargs["shm_size"] = spec.shm_size_bytes
    return kwargs
