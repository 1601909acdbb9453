"""The control plane's TLS set-up: which certificate it presents, which CA
its clients trust, and the two credentials it listens with.

The API address is TLS with a server certificate only: people and programs
authenticate with bearer tokens. The agent address requires a client
certificate signed by the cluster CA (mTLS): gRPC's Python server can either
require client certificates or not ask for them at all, so node agents get an
address of their own, on which a handshake without a valid node certificate
(missing, expired, or from another CA) fails before any call is made.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from cryptography import x509

from controlplane.security.ca import ClusterCA
from muster.common.files import write_private
from muster.common.net import host_of
from muster.common.pki import cert_pem

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class SecurityConfig:
    """Where trust material lives and what to bring instead of muster's own."""

    state_dir: Path
    agent_listen: str
    extra_names: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    @property
    def pki(self) -> Path:
        """Where the CA and the server certificate are kept."""
        return self.state_dir / "pki"


@dataclass(frozen=True)
class TlsMaterial:
    """What the server listens with and what its clients must trust."""

    ca: ClusterCA
    server_key: bytes
    server_chain: bytes
    trust_anchor: bytes
    client_roots: bytes

    def api_credentials(self) -> grpc.ServerCredentials:
        """TLS for the API address (no client certificate asked)."""
        return grpc.ssl_server_credentials([(self.server_key, self.server_chain)])

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for the data plane's HTTP address, with the API's certificate.
        (The ssl module loads keys only from files: a private temporary one.)"""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            key, chain = Path(tmp) / "server.key", Path(tmp) / "server.crt"
            write_private(key, self.server_key)
            write_private(chain, self.server_chain)
            context.load_cert_chain(chain, key)
        return context

    def agent_credentials(self) -> grpc.ServerCredentials:
        """mTLS for the agent address: a node certificate is required."""
        return grpc.ssl_server_credentials(
            [(self.server_key, self.server_chain)],
            root_certificates=self.client_roots,
            require_client_auth=True,
        )


def server_names(listen: list[str], extra: tuple[str, ...]) -> list[str]:
    """Names and addresses the server certificate must hold: loopback, this
    host's name, each listen address, or every local address when listening
    on a wildcard, and any the operator adds with --tls-san."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), *extra}
    for address in listen:
        host = host_of(address)
        if host in WILDCARDS:
            for addrs in psutil.net_if_addrs().values():
                for a in addrs:
                    if a.family in (socket.AF_INET, socket.AF_INET6):
                        names.add(a.address.split("%", 1)[0])
        else:
            names.add(host)
    return sorted(n for n in names if n)


def _last_cert(chain: bytes) -> bytes:
    certs = x509.load_pem_x509_certificates(chain)
    return cert_pem(certs[-1])


def load_material(config: SecurityConfig, listen: list[str]) -> TlsMaterial:
    """Create or load the CA and the server certificate (or the operator's own)."""
    ca = ClusterCA.load_or_create(config.pki)
    if config.tls_cert and config.tls_key:
        chain, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        anchor = _last_cert(chain)
    else:
        key, chain = ca.ensure_server_cert(config.pki, server_names(listen, config.extra_names))
        anchor = ca.pem
    roots = ca.pem + (config.client_ca.read_bytes() if config.client_ca else b"")
    return TlsMaterial(ca, key, chain, anchor, roots)
