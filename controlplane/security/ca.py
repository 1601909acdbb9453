"""The cluster CA: made on first start in the state directory, it signs the
control plane's server certificate and every node certificate.

Files (keys mode 0600, in `<state-dir>/pki/`): `ca.key`, `ca.crt`,
`server.key`, `server.crt`. The server certificate is re-issued at start
whenever it lacks a name the control plane now answers to, or has used up two
thirds of its life; the CA is never replaced by muster itself (rotating it
means re-joining the agents, see the README).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from muster.common.pki import (
    NODE_OU,
    POOL_URI_PREFIX,
    cert_pem,
    common_name,
    key_pem,
    load_key,
    new_key,
    utcnow,
    write_private,
)

log = logging.getLogger(__name__)

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=365)
NODE_LIFETIME = timedelta(days=30)


class CsrError(ValueError):
    """A certificate signing request that cannot be signed, and why."""


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def san_names(cert: x509.Certificate) -> set[str]:
    """DNS names and IP addresses a certificate is valid for, as strings."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


@dataclass
class ClusterCA:
    """The CA key and certificate, able to sign server and node certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        """The CA certificate, PEM: what clients and agents trust."""
        return cert_pem(self.cert)

    @classmethod
    def load_or_create(cls, pki: Path, now: datetime | None = None) -> ClusterCA:
        """Read `ca.key`/`ca.crt` from `pki`, or make them (first start)."""
        key_file, cert_file = pki / "ca.key", pki / "ca.crt"
        if key_file.exists() and cert_file.exists():
            return cls(
                load_key(key_file.read_bytes()),
                x509.load_pem_x509_certificate(cert_file.read_bytes()),
            )
        now = now or utcnow()
        key = new_key()
        name = _name(f"muster cluster CA {secrets.token_hex(4)}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_file, key_pem(key))
        write_private(cert_file, cert_pem(cert), mode=0o644)
        log.info("event=ca_created file=%s", cert_file)
        return cls(key, cert)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: datetime,
        lifetime: timedelta,
    ) -> x509.Certificate:
        not_after = min(not_before + lifetime, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def ensure_server_cert(
        self, pki: Path, names: list[str], now: datetime | None = None
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) of a server certificate valid for every
        name in `names`, re-issued when one is missing or it is getting old."""
        now = now or utcnow()
        key_file, cert_file = pki / "server.key", pki / "server.crt"
        wanted = set(names)
        if key_file.exists() and cert_file.exists():
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            life = cert.not_valid_after_utc - cert.not_valid_before_utc
            fresh = now < cert.not_valid_before_utc + life * 2 / 3
            if wanted <= san_names(cert) and fresh and cert.issuer == self.cert.subject:
                return key_file.read_bytes(), cert_file.read_bytes()
        key = new_key()
        cert = self._leaf(
            _name("muster control plane"),
            key.public_key(),
            [_san_entry(n) for n in sorted(wanted)],
            ExtendedKeyUsageOID.SERVER_AUTH,
            now - timedelta(minutes=5),
            SERVER_LIFETIME,
        )
        write_private(key_file, key_pem(key))
        write_private(cert_file, cert_pem(cert), mode=0o644)
        log.info("event=server_cert_issued names=%s", ",".join(sorted(wanted)))
        return key_pem(key), cert_pem(cert)

    def sign_node(
        self,
        csr_pem: bytes,
        node: str,
        pools: tuple[str, ...],
        now: datetime,
        lifetime: timedelta = NODE_LIFETIME,
    ) -> bytes:
        """A node certificate for the key in `csr_pem`, binding `node` and `pools`.

        Valid from `now` (whole seconds), so that a certificate issued after a
        node's removal can be told from the ones it revoked."""
        public_key = check_csr(csr_pem, node)
        uris: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(POOL_URI_PREFIX + p) for p in pools
        ]
        cert = self._leaf(
            _name(node, NODE_OU),
            public_key,
            uris,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            now.replace(microsecond=0),
            lifetime,
        )
        return cert_pem(cert)


def check_csr(csr_pem: bytes, node: str) -> ec.EllipticCurvePublicKey:
    """The public key of a signing request for `node`, or CsrError saying what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrError(f"the certificate signing request is not valid PEM: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise CsrError("the certificate signing request's signature does not verify")
    public_key = csr.public_key()
    if (
        not isinstance(public_key, ec.EllipticCurvePublicKey)
        or public_key.curve.name != "secp256r1"
    ):
        raise CsrError("the certificate signing request must be for an ECDSA P-256 key")
    if common_name(csr.subject) != node:
        raise CsrError(
            f"the signing request names '{common_name(csr.subject)}', not the node '{node}'"
        )
    return public_key
