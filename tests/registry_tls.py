"""A test registry's TLS files: a CA of its own and a certificate for one IP,
made with the control plane's own CA code (ca.crt, server.crt, server.key)."""

from __future__ import annotations

from pathlib import Path

from controlplane.security.ca import ClusterCA


def write_tls(directory: Path, address: str) -> None:
    """A new CA (``ca.crt``) and a server certificate it signed for the IP
    ``address`` (``server.crt``, ``server.key``) in ``directory``."""
    directory.mkdir(parents=True)
    ClusterCA.load_or_create(directory).ensure_server_cert(directory, [address])
