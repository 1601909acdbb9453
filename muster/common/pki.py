"""Keys, signing requests and node certificates, shared by the control plane
(which signs) and the agent (which asks).

A node certificate binds one node name (the subject's common name) and the
pools its join token granted (one `urn:muster:pool:<pool>` URI each in the
subject alternative names). The control plane reads both back from the peer
certificate of every agent stream, so what a node may claim travels with the
certificate itself and needs no lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from muster.common.files import write_private as write_private  # re-exported

POOL_URI_PREFIX = "urn:muster:pool:"
NODE_OU = "muster-node"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: files holding it are mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse a PEM private key; only EC keys are used by muster."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def node_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """A PEM signing request whose subject is the node name."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class NodeCert:
    """What a node certificate says."""

    node: str
    pools: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime

    def renew_due(self, now: datetime) -> datetime:
        """When to renew: once two thirds of the validity have passed."""
        return self.not_before + (self.not_after - self.not_before) * 2 / 3


def common_name(name: x509.Name) -> str:
    """The subject's common name, or '' when it has none."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode()


def parse_node_cert(pem: bytes) -> NodeCert:
    """Read a node certificate's name, pools, serial and validity."""
    cert = x509.load_pem_x509_certificate(pem)
    pools: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        pools = [
            uri[len(POOL_URI_PREFIX) :]
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(POOL_URI_PREFIX)
        ]
    except x509.ExtensionNotFound:
        pass
    return NodeCert(
        node=common_name(cert.subject),
        pools=tuple(pools),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)
