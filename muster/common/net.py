"""Addresses as people write them (`HOST:PORT`, `[::1]:50051`), for every side."""

from __future__ import annotations

import ipaddress


def host_of(address: str) -> str:
    """'10.0.0.1:50051' -> '10.0.0.1'; '[::1]:50051' -> '::1'."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(address: str) -> bool:
    """Whether `HOST:PORT` can only be reached from this machine."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
