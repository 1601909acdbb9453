"""The agent's node identity: join once, then connect with a node certificate
and renew it before it expires.

State directory (mode 0700; key and certificate 0600):
  node.key, node.crt   the node's key and certificate (subject = node name)
  ca.crt               the CA that vouches for the control plane
  agent.json           where the agent address (mTLS) is, learned at join time

On first start the agent makes its own key (it never leaves the machine),
sends a signing request with a single-use join token over TLS to the API
address (the server verified with --ca-cert), and stores what comes back.
Afterwards it uses only the certificate, on the control plane's agent address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.logutil import log
from muster.common.leaders import LEADER_API_KEY, hint_in, split_addresses
from muster.common.pki import (
    NodeCert,
    key_pem,
    load_key,
    new_key,
    node_csr,
    parse_node_cert,
    utcnow,
    write_private,
)
from muster.v1 import agent_pb2, agent_pb2_grpc

_log = logging.getLogger(__name__)
RENEW_RETRY_SECONDS = 60.0


class JoinError(RuntimeError):
    """The agent cannot get or use a node certificate; the message says what to do."""


@dataclass(frozen=True)
class NodeCredentials:
    """Key, certificate and CA in PEM, plus where to connect with them."""

    key: bytes
    cert: bytes
    ca: bytes
    agent_server: str

    @property
    def info(self) -> NodeCert:
        """What the certificate says."""
        return parse_node_cert(self.cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS: verify the control plane with the CA, present the node certificate."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def _host(server: str) -> str:
    return server.rsplit(":", 1)[0] if ":" in server else server


class CredentialStore:
    """The files of one node's identity in its state directory.

    Key and certificate are replaced as a pair, crash-safely: both new files
    are written in full (each atomically: a temporary file, fsync, rename) as
    `node.key.new` and then `node.crt.new`, and only then renamed over the old
    ones, key first. So `node.crt.new` on disk means the new pair is complete,
    and `load` finishes an interrupted swap; a `node.key.new` without it is a
    replacement that never got its certificate, and is discarded (the old pair
    is still in place). Key and certificate therefore always match."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def load(self) -> NodeCredentials | None:
        """What is stored, or None before the first join."""
        self._recover()
        files = [self.dir / n for n in ("node.key", "node.crt", "ca.crt", "agent.json")]
        if not all(f.exists() for f in files):
            return None
        meta = json.loads(files[3].read_text())
        creds = NodeCredentials(
            files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes(), meta["agentServer"]
        )
        if not _pair_matches(creds.key, creds.cert):
            raise JoinError(
                f"{files[0]} and {files[1]} do not belong together (the key is not the "
                "certificate's); remove the node (muster node remove), empty the state "
                "directory and join again"
            )
        return creds

    def save(self, creds: NodeCredentials) -> None:
        """Write every file; the key and certificate replace the old pair together."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.dir / "ca.crt", creds.ca)
        write_private(
            self.dir / "agent.json", json.dumps({"agentServer": creds.agent_server}).encode()
        )
        write_private(self.dir / "node.key.new", creds.key)
        write_private(self.dir / "node.crt.new", creds.cert)  # from here on, the new pair wins
        self._recover()

    def _recover(self) -> None:
        """Finish a pair replacement that got as far as `node.crt.new`, or drop
        one that did not (see the class docstring); idempotent."""
        key, cert = self.dir / "node.key", self.dir / "node.crt"
        key_new, cert_new = self.dir / "node.key.new", self.dir / "node.crt.new"
        if cert_new.exists():
            if key_new.exists():
                os.replace(key_new, key)
            os.replace(cert_new, cert)
            _sync_dir(self.dir)
        elif key_new.exists():
            key_new.unlink()
            log(_log, logging.WARNING, "half_written_key_discarded", file=key_new)
        # write_private's temporary files, left by a crash while writing one
        for stale in self.dir.glob(".node.*.new.*"):
            stale.unlink(missing_ok=True)


def _pair_matches(key_pem_: bytes, cert_pem: bytes) -> bool:
    """Whether the certificate is for this private key."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        mine = load_key(key_pem_).public_key().public_bytes(der, spki)
        theirs = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(der, spki)
    except ValueError:
        return False
    return mine == theirs


def _sync_dir(path: Path) -> None:
    """Make renames in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def join(
    server: str, ca_pem: bytes, token: str, node_name: str, agent_server: str | None
) -> NodeCredentials:
    """Spend a join token on a node certificate (one call, server verified by `ca_pem`)."""
    key = new_key()
    request = agent_pb2.JoinRequest(
        join_token=token, node_name=node_name, csr_pem=node_csr(key, node_name).decode()
    )
    async with grpc.aio.secure_channel(server, grpc.ssl_channel_credentials(ca_pem)) as channel:
        reply = await agent_pb2_grpc.AgentServiceStub(channel).Join(request, timeout=30)
    return NodeCredentials(
        key_pem(key),
        reply.certificate_pem.encode(),
        reply.ca_pem.encode() or ca_pem,
        agent_server or f"{_host(server)}:{reply.agent_port}",
    )


FATAL_JOIN = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}


async def ensure_credentials(
    store: CredentialStore,
    node_name: str,
    server: str,
    ca_pem: bytes | None,
    join_token: str,
    agent_server: str | None,
    stop: asyncio.Event,
    delay: Callable[[int], float],
) -> NodeCredentials | None:
    """The stored identity, or a new one from a join (retried while the
    control plane is unreachable). None if `stop` is set first.

    `server`: the API addresses, comma-separated; joins go to the first, then to
    the leader a follower's refusal names (only the leader admits a Join, since
    only it knows which nodes exist), else to the next address after a delay."""
    creds = _stored(store, node_name, join_token, agent_server)
    if creds is not None:
        return creds
    if not join_token:
        raise JoinError(
            f"no node certificate in {store.dir}: join first with --join-token "
            "(an admin makes one with `muster node join-token create --pool POOL`)"
        )
    if ca_pem is None:
        raise JoinError("--ca-cert is needed to join (the cluster CA from the control plane)")
    creds = await _join_until_done(
        split_addresses(server) or [server], ca_pem, join_token, node_name, agent_server,
        stop, delay,
    )  # fmt: skip
    if creds is None:
        return None
    store.save(creds)
    log(
        _log,
        logging.INFO,
        "joined",
        node=node_name,
        pools=",".join(creds.info.pools),
        agent_server=creds.agent_server,
    )
    return creds


async def _join_until_done(
    servers: list[str],
    ca_pem: bytes,
    join_token: str,
    node_name: str,
    agent_server: str | None,
    stop: asyncio.Event,
    delay: Callable[[int], float],
) -> NodeCredentials | None:
    """Join through the first address, the leader a refusal names, or the next
    address after a delay, until it works, a refusal is final, or `stop`."""
    target, attempt, followed = servers[0], 0, False
    while not stop.is_set():
        try:
            return await join(target, ca_pem, join_token, node_name, agent_server)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FATAL_JOIN:
                raise JoinError(f"joining {target} failed: {exc.details()}") from None
            leader = _leader_api(exc)
            if leader and leader != target and not followed:
                log(_log, logging.INFO, "join_follows_leader", server=target, leader=leader)
                target, followed = leader, True
                continue
            wait = delay(attempt)
            attempt += 1
            log(
                _log,
                logging.WARNING,
                "join_retry",
                server=target,
                error=exc.details(),
                retry_in=f"{wait:.2f}s",
            )
            target, followed = servers[attempt % len(servers)], False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    return None


def _leader_api(error: grpc.aio.AioRpcError) -> str | None:
    """The leader's API address a follower's refusal names, if any."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    hint = hint_in(error, LEADER_API_KEY)
    return split_addresses(hint)[0] if hint and split_addresses(hint) else None


def _stored(
    store: CredentialStore, node_name: str, join_token: str, agent_server: str | None
) -> NodeCredentials | None:
    """The stored identity of ``node_name`` while it is valid; None when there is
    none, or when it expired and ``join_token`` can make a new one."""
    creds = store.load()
    if creds is None:
        return None
    info = creds.info
    if info.node != node_name:
        raise JoinError(
            f"{store.dir} holds the certificate of node '{info.node}', not '{node_name}'; "
            "use another --state-dir or --node-name"
        )
    if utcnow() < info.not_after:
        if agent_server and agent_server != creds.agent_server:
            creds = NodeCredentials(creds.key, creds.cert, creds.ca, agent_server)
        return creds
    if not join_token:
        raise JoinError(
            f"the certificate of node '{node_name}' expired at "
            f"{info.not_after:%Y-%m-%d %H:%M}Z; remove the node (muster node remove) "
            "and join again with a new --join-token"
        )
    return None


class Renewer:
    """Renews the node certificate once two thirds of its life have passed."""

    def __init__(
        self,
        store: CredentialStore,
        creds: NodeCredentials,
        on_renewed: Callable[[NodeCredentials], None],
        clock: Callable[[], datetime] = utcnow,
        renew: Callable[[NodeCredentials, bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        self._store = store
        self.creds = creds
        self._on_renewed = on_renewed
        self._clock = clock
        self._renew = renew or _renew_call

    async def run(self) -> None:
        """Forever: wait until renewal is due, renew, repeat (retrying failures)."""
        while True:
            info = self.creds.info
            wait = (info.renew_due(self._clock()) - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))
                continue
            try:
                await self.renew_now()
            except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
                log(_log, logging.WARNING, "certificate_renewal_failed", error=exc)
            # Also after a success: a certificate that is due at once (say, one
            # cut short by the CA's own expiry) must not be renewed in a loop.
            await asyncio.sleep(RENEW_RETRY_SECONDS * random.uniform(0.5, 1.0))

    async def renew_now(self) -> NodeCredentials:
        """Get a certificate for a new key, store it and hand it on."""
        key = new_key()
        cert = await self._renew(self.creds, node_csr(key, self.creds.info.node))
        fresh = NodeCredentials(key_pem(key), cert, self.creds.ca, self.creds.agent_server)
        self._store.save(fresh)
        self.creds = fresh
        self._on_renewed(fresh)
        log(_log, logging.INFO, "certificate_renewed", not_after=fresh.info.not_after.isoformat())
        return fresh


async def _renew_call(creds: NodeCredentials, csr: bytes) -> bytes:
    async with grpc.aio.secure_channel(creds.agent_server, creds.channel_credentials()) as channel:
        reply = await agent_pb2_grpc.AgentServiceStub(channel).RenewCertificate(
            agent_pb2.RenewCertificateRequest(csr_pem=csr.decode()), timeout=30
        )
    return reply.certificate_pem.encode()
