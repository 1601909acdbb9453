"""The agent's side of node identity, against a real secure control plane:
join through the agent's own code, stored files, renewal at two thirds."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.credentials import CredentialStore, JoinError, NodeCredentials, Renewer, join
from agent.credentials import ensure_credentials as ensure
from controlplane.security.ca import ClusterCA
from muster.common.pki import key_pem, load_key, new_key, node_csr, parse_node_cert, utcnow
from tests.security.conftest import Secure, connect

IDENTITY_FILES = ("node.key", "node.crt", "ca.crt", "agent.json")


def assert_private(directory: Path) -> None:
    """The state directory 0700, every identity file in it 0600, nothing left over."""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    modes = {name: stat.S_IMODE((directory / name).stat().st_mode) for name in IDENTITY_FILES}
    assert modes == dict.fromkeys(IDENTITY_FILES, 0o600)
    assert sorted(p.name for p in directory.iterdir()) == sorted(IDENTITY_FILES)


def matches(creds: NodeCredentials) -> bool:
    """Whether the certificate is for the key (what TLS needs of the pair)."""
    return load_key(creds.key).public_key() == parse_cert_key(creds.cert)


def parse_cert_key(cert: bytes) -> ec.EllipticCurvePublicKey:
    key = x509.load_pem_x509_certificate(cert).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


async def ensure_credentials(store, node, secure: Secure, token: str):
    return await ensure(
        store, node, secure.api, secure.ca, token, None, asyncio.Event(), lambda _: 0.01
    )


async def test_join_store_reuse_and_renew(secure: Secure, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "node-a")
    creds = await ensure_credentials(store, "node-a", secure, await secure.join_token("cpu"))
    assert creds is not None and creds.agent_server == secure.agents
    assert store.load() == creds
    assert_private(store.dir)
    key = load_key(creds.key)  # the agent's own key: ECDSA P-256
    assert isinstance(key.curve, ec.SECP256R1) and matches(creds)
    # Stored: the next start needs no token and gets the same identity.
    assert await ensure_credentials(store, "node-a", secure, "") == creds
    try:
        await ensure_credentials(store, "node-b", secure, "")
        raise AssertionError("another node name must not reuse this identity")
    except JoinError as exc:
        assert "node-a" in str(exc)
    seen: list[NodeCredentials] = []
    renewer = Renewer(store, creds, seen.append)
    fresh = await renewer.renew_now()
    assert seen == [fresh] and store.load() == fresh and fresh.key != creds.key
    assert_private(store.dir)
    assert matches(fresh) and isinstance(load_key(fresh.key).curve, ec.SECP256R1)
    old, new = parse_node_cert(creds.cert), parse_node_cert(fresh.cert)
    assert (new.node, new.pools) == ("node-a", ("cpu",)) and new.not_after >= old.not_after
    # The renewed pair opens a stream.
    async with grpc.aio.secure_channel(fresh.agent_server, fresh.channel_credentials()) as ch:
        agent = await connect(ch, "node-a", ["cpu"])
        await agent.next("registered")


async def test_renewer_waits_for_two_thirds_of_the_life(secure: Secure, tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "n")
    creds = await join(secure.api, secure.ca, await secure.join_token("cpu"), "n", None)
    info = parse_node_cert(creds.cert)
    life = info.not_after - info.not_before
    calls: list[bytes] = []

    async def renew(c: NodeCredentials, csr: bytes) -> bytes:
        calls.append(csr)
        return c.cert

    now = info.not_before + life * 0.6
    renewer = Renewer(store, creds, lambda _: None, clock=lambda: now, renew=renew)
    task = asyncio.create_task(renewer.run())
    await asyncio.sleep(0.05)
    assert calls == []  # not due yet (the loop sleeps until it is)
    task.cancel()
    now = info.not_before + life * 0.67
    renewer = Renewer(store, creds, lambda _: None, clock=lambda: now, renew=renew)
    task = asyncio.create_task(renewer.run())
    deadline = asyncio.get_running_loop().time() + 5
    while not calls:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    assert info.renew_due(now) == info.not_before + life * 2 / 3
    assert timedelta(days=19) < life * 2 / 3 < timedelta(days=21)


def two_pairs(tmp_path: Path) -> tuple[NodeCredentials, NodeCredentials]:
    """An identity and its renewal, signed by a CA of the test's own."""
    ca = ClusterCA.load_or_create(tmp_path / "pki")
    pairs = []
    for _ in range(2):
        key = new_key()
        cert = ca.sign_node(node_csr(key, "node-a"), "node-a", ("cpu",), utcnow())
        pairs.append(NodeCredentials(key_pem(key), cert, ca.pem, "127.0.0.1:1"))
    return pairs[0], pairs[1]


@pytest.mark.parametrize("crash_before", ["node.key.new", "node.crt.new", "node.key", "node.crt"])
def test_a_crash_while_replacing_the_pair_leaves_a_matching_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_before: str
) -> None:
    """The process dies just before the rename that would put `crash_before`
    in place; the next start finds a key and certificate that belong together:
    the old pair before the new certificate was written in full, the new one
    after."""
    old, new = two_pairs(tmp_path)
    store = CredentialStore(tmp_path / "node-a")
    store.save(old)
    real_replace = os.replace

    class Crash(BaseException):
        """Stands for the process dying (nothing after it runs)."""

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == crash_before:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        store.save(new)
    monkeypatch.setattr(os, "replace", real_replace)
    loaded = CredentialStore(store.dir).load()  # the next start
    assert loaded is not None and matches(loaded)
    committed = crash_before in ("node.key", "node.crt")  # node.crt.new was complete
    assert loaded == (new if committed else old)
    assert_private(store.dir)


def test_a_mismatched_pair_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    old, new = two_pairs(tmp_path)
    store = CredentialStore(tmp_path / "node-a")
    store.save(old)
    (store.dir / "node.key").write_bytes(new.key)  # as an older agent's crash could leave it
    with pytest.raises(JoinError, match="do not belong together"):
        store.load()
