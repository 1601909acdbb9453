"""TCP readiness probing of worker endpoints.

A worker is ready when every declared endpoint accepts a TCP connection
(Podman 4.3 runs health checks through systemd, which these hosts lack).
Probes use asyncio's non-blocking sockets, so hundreds of them never stall the
event loop or occupy executor threads.

Where to probe depends on the network mode:

* bridge: the container's IP on the run network, container port. Rootful
  Podman routes the bridge subnet on the host, so the agent (running on the
  host) reaches it directly. The job uses ``hostname:port`` (DNS alias).
* host-port: ``<advertise address>:<host port>``, exactly what the job uses
  (the agent runs on the node, so it reaches its own advertise address), or
  the publish address when ports are bound to one specific address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

from agent.runtime import ContainerInfo, EndpointTarget, NetworkMode

DEFAULT_TIMEOUT = 0.5


async def tcp_accepts(host: str, port: int, connect_timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether ``host:port`` completes a TCP handshake within ``connect_timeout`` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def ip_literal(host: str | None) -> str:
    """``host`` if it is an IP address literal, else '' (names are left to DNS)."""
    try:
        return str(ipaddress.ip_address(host or ""))
    except ValueError:
        return ""


def join_host_port(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals (``[::1]:80``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_targets(
    info: ContainerInfo,
    mode: NetworkMode,
    advertise_address: str,
    publish_address: str,
) -> list[EndpointTarget]:
    """Probe targets and job-facing addresses for ``info``'s endpoints, in order.

    In host-port mode an endpoint without a published port (should not
    happen) gets ``probe_host=None`` so it is simply never ready.
    """
    targets: list[EndpointTarget] = []
    for name, port in info.endpoints.items():
        if mode == "bridge":
            targets.append(
                EndpointTarget(
                    name=name,
                    port=port,
                    probe_host=info.ip,
                    probe_port=port,
                    address=f"{info.hostname}:{port}",
                )
            )
            continue
        host_port = info.host_ports.get(name)
        probe_host = (
            publish_address if publish_address not in ("", "0.0.0.0") else advertise_address
        )
        targets.append(
            EndpointTarget(
                name=name,
                port=port,
                probe_host=probe_host if host_port else None,
                probe_port=host_port or 0,
                address=join_host_port(advertise_address, host_port or 0),
            )
        )
    return targets
