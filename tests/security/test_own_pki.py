"""Bring your own PKI: the operator's server certificate (--tls-cert/--tls-key)
and node certificates from the operator's CA (--client-ca)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.security.ca import ClusterCA
from controlplane.security.tls import SecurityConfig
from controlplane.server import start
from muster.common.pki import key_pem, new_key, node_csr, utcnow
from muster.v1 import agent_pb2 as apb
from tests.security.conftest import SETTINGS, NodeIdentity, Secure, connect


async def test_operator_server_certificate_and_client_ca(tmp_path: Path) -> None:
    own = ClusterCA.load_or_create(tmp_path / "own-ca")  # stands in for the operator's CA
    key, chain = own.ensure_server_cert(tmp_path / "own-ca", ["127.0.0.1", "localhost"])
    (tmp_path / "tls.crt").write_bytes(chain + own.pem)  # the chain up to its root
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "clients.pem").write_bytes(own.pem)
    state = tmp_path / "state"
    plane = await start(
        "127.0.0.1:0",
        tmp_path / "cp.db",
        SETTINGS,
        SecurityConfig(
            state_dir=state,
            agent_listen="127.0.0.1:0",
            tls_cert=tmp_path / "tls.crt",
            tls_key=tmp_path / "tls.key",
            client_ca=tmp_path / "clients.pem",
        ),
    )
    try:
        admin = json.loads((state / "admin.json").read_text())
        assert admin["caCert"].encode() == own.pem  # clients trust the operator's root
        secure = Secure(plane, state, own.pem, admin["token"])
        async with secure.channel() as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A node certificate issued by the operator's CA (name and pools inside) is accepted.
        node_key = new_key()
        cert = own.sign_node(node_csr(node_key, "ext-1"), "ext-1", ("cpu",), utcnow())
        ident = NodeIdentity("ext-1", key_pem(node_key), cert, apb.JoinResponse())
        async with secure.node_channel(ident) as ch:
            agent = await connect(ch, "ext-1", ["cpu"])
            await agent.next("registered")
        # A join still works: the cluster CA signs, and agents are told the operator's root.
        joined = await secure.join("own-1", await secure.join_token("cpu"))
        assert joined.reply.ca_pem.encode() == own.pem
        async with secure.node_channel(joined) as ch:
            agent = await connect(ch, "own-1", ["cpu"])
            await agent.next("registered")
        assert utcnow() + timedelta(days=29) < own.cert.not_valid_after_utc
    finally:
        await plane.stop(grace=0.2)
