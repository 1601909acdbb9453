"""Node restriction over real mTLS: join tokens, node certificates, what a
node may claim and report, removal and renewal."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.security.ca import ClusterCA
from muster.common.pki import key_pem, new_key, node_csr, parse_node_cert, utcnow
from muster.v1 import agent_pb2 as apb
from muster.v1 import agent_pb2_grpc as agrpc
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.security.conftest import NodeIdentity, Secure, connect


async def expect_code(code: grpc.StatusCode, coro) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


async def registered(secure: Secure, ident: NodeIdentity, pools: list[str]):
    channel = secure.node_channel(ident)
    agent = await connect(channel, ident.name, pools)
    await agent.next("registered")
    return channel, agent


async def run_in_pool(secure: Secure, pool: str) -> int:
    async with secure.channel() as ch:
        await cgrpc.CodespecServiceStub(ch).CreateCodespec(
            cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
        )
        reply = await rgrpc.RunServiceStub(ch).CreateRun(
            rpb.CreateRunRequest(
                run=rpb.Run(
                    job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool=pool)
                )
            )
        )
    return reply.run.id


async def get_run(secure: Secure, run_id: int) -> rpb.Run:
    async with secure.channel() as ch:
        return (await rgrpc.RunServiceStub(ch).GetRun(rpb.GetRunRequest(run_id=run_id))).run


async def log_count(secure: Secure, run_id: int) -> int:
    async with secure.channel() as ch:
        lines = 0
        async for reply in rgrpc.RunServiceStub(ch).GetRunLogs(
            rpb.GetRunLogsRequest(run_id=run_id)
        ):
            lines += len(reply.lines)
        return lines


def status(run_id: int, state: int, exit_code: int | None = None, **extra) -> apb.ContainerStatus:
    now = Timestamp()
    now.GetCurrentTime()
    return apb.ContainerStatus(
        run_id=run_id,
        role=rpb.REPLICA_ROLE_JOB,
        replica=0,
        container_name=f"muster-run-{run_id}-job-0",
        state=state,  # type: ignore[arg-type]
        exit_code=exit_code,
        time=now,
        **extra,
    )


def log_batch(run_id: int, text: str, sequence: int = 0) -> apb.LogBatch:
    now = Timestamp()
    now.GetCurrentTime()
    return apb.LogBatch(
        entries=[
            apb.LogEntry(
                run_id=run_id,
                role=rpb.REPLICA_ROLE_JOB,
                replica=0,
                time=now,
                stream=rpb.LOG_STREAM_STDOUT,
                text=text,
                sequence=sequence,
            )
        ]
    )


def foreign_csr(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A well-formed signing request with a key muster does not use."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def curve_of(pem: bytes) -> ec.EllipticCurve:
    """The curve of a PEM certificate's or private key's key (fails for non-EC keys)."""
    if b"CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_private_key(pem, password=None).public_key()  # type: ignore[assignment]
    assert isinstance(key, ec.EllipticCurvePublicKey), type(key)
    return key.curve


async def test_every_key_is_ecdsa_p256(secure: Secure) -> None:
    pki = secure.state / "pki"
    for name in ("ca.key", "ca.crt", "server.key", "server.crt"):
        assert isinstance(curve_of((pki / name).read_bytes()), ec.SECP256R1), name
    ident = await secure.join("node-a", await secure.join_token("cpu"))
    assert isinstance(curve_of(ident.cert), ec.SECP256R1)
    signed = x509.load_pem_x509_certificate(ident.cert)
    assert isinstance(signed.signature_hash_algorithm, hashes.SHA256)
    assert signed.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256


async def test_join_token_is_single_use_and_binds_name_and_pools(secure: Secure) -> None:
    token = await secure.join_token("cpu", "fast")
    ident = await secure.join("node-a", token)
    cert = parse_node_cert(ident.cert)
    assert (cert.node, cert.pools) == ("node-a", ("cpu", "fast"))
    assert ident.reply.agent_port == secure.plane.agent_port
    assert timedelta(days=29) < cert.not_after - utcnow() <= timedelta(days=30)
    detail = await expect_code(grpc.StatusCode.UNAUTHENTICATED, secure.join("node-b", token))
    assert "already used" in detail


async def test_expired_and_forged_join_tokens_are_refused(secure: Secure) -> None:
    await expect_code(grpc.StatusCode.UNAUTHENTICATED, secure.join("n", "msj_forged"))
    await expect_code(grpc.StatusCode.UNAUTHENTICATED, secure.join("n", ""))
    token = await secure.join_token("cpu", ttl=1)
    deadline = time.monotonic() + 5
    while True:
        try:
            ident = await secure.join(f"n{time.monotonic_ns()}", token)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        # Joined before it expired: spent, so the next attempt must fail.
        assert ident.cert
        token = await secure.join_token("cpu", ttl=1)
        await asyncio.sleep(1.1)
        assert time.monotonic() < deadline


async def test_join_refuses_bad_input_without_spending_the_token(secure: Secure) -> None:
    token = await secure.join_token("cpu")
    async with grpc.aio.secure_channel(secure.api, grpc.ssl_channel_credentials(secure.ca)) as ch:
        stub = agrpc.AgentServiceStub(ch)
        key = new_key()
        for node, csr, code in [
            ("Bad Name", node_csr(key, "Bad Name"), grpc.StatusCode.INVALID_ARGUMENT),
            ("node-x", b"not a csr", grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            await expect_code(
                code,
                stub.Join(apb.JoinRequest(join_token=token, node_name=node, csr_pem=csr.decode())),
            )
        # A signing request for another name than the node's is refused.
        detail = await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.Join(
                apb.JoinRequest(
                    join_token=token, node_name="node-x", csr_pem=node_csr(key, "other").decode()
                )
            ),
        )
        assert "other" in detail
        # Only ECDSA P-256 keys are signed: RSA and P-384 requests are refused.
        for other_key in (
            rsa.generate_private_key(65537, 2048),
            ec.generate_private_key(ec.SECP384R1()),
        ):
            detail = await expect_code(
                grpc.StatusCode.INVALID_ARGUMENT,
                stub.Join(
                    apb.JoinRequest(
                        join_token=token,
                        node_name="node-x",
                        csr_pem=foreign_csr(other_key, "node-x").decode(),
                    )
                ),
            )
            assert "P-256" in detail, detail
    await secure.join("node-x", token)  # none of the refusals spent it
    await secure.join("node-y", (await secure.join_token("cpu")))
    async with secure.channel() as ch:
        await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            ngrpc.NodeServiceStub(ch).CreateJoinToken(npb.CreateJoinTokenRequest()),
        )


async def test_a_node_may_register_only_as_itself_in_its_pools(secure: Secure) -> None:
    ident = await secure.join("node-a", await secure.join_token("cpu"))
    async with secure.node_channel(ident) as ch:
        impostor = await connect(ch, "node-b", ["cpu"])
        detail = await expect_code(grpc.StatusCode.PERMISSION_DENIED, impostor.next("registered"))
        assert "node-a" in detail and "node-b" in detail
        greedy = await connect(ch, "node-a", ["cpu", "gpu"])
        detail = await expect_code(grpc.StatusCode.PERMISSION_DENIED, greedy.next("registered"))
        assert "gpu" in detail
        honest = await connect(ch, "node-a", ["cpu"])
        await honest.next("registered")
    async with secure.channel() as admin:
        nodes = (await ngrpc.NodeServiceStub(admin).ListNodes(npb.ListNodesRequest())).nodes
    assert [(n.name, list(n.pools)) for n in nodes] == [("node-a", ["cpu"])]


async def test_a_node_joined_already_cannot_be_joined_again(secure: Secure) -> None:
    ident = await secure.join("node-a", await secure.join_token("cpu"))
    channel, _ = await registered(secure, ident, ["cpu"])
    token = await secure.join_token("cpu")
    detail = await expect_code(grpc.StatusCode.ALREADY_EXISTS, secure.join("node-a", token))
    assert "muster node remove node-a" in detail
    await secure.join("node-z", token)  # the refused join did not spend the token
    await channel.close()


async def test_expired_or_foreign_certificates_fail_the_handshake(secure: Secure) -> None:
    ca = ClusterCA.load_or_create(secure.state / "pki")
    key = new_key()
    old = utcnow() - timedelta(days=2)
    expired = NodeIdentity(
        "node-old",
        key_pem(key),
        ca.sign_node(node_csr(key, "node-old"), "node-old", ("cpu",), old, timedelta(days=1)),
        apb.JoinResponse(),
    )
    other = ClusterCA.load_or_create(secure.state / "other-ca")
    forged = NodeIdentity(
        "node-f",
        key_pem(key),
        other.sign_node(node_csr(key, "node-f"), "node-f", ("cpu",), utcnow()),
        apb.JoinResponse(),
    )
    for ident in (expired, forged):
        async with secure.node_channel(ident) as ch:
            agent = await connect(ch, ident.name, ["cpu"])
            await expect_code(grpc.StatusCode.UNAVAILABLE, agent.next("registered"))


async def test_reports_and_logs_count_only_from_the_node_that_holds_the_replica(
    secure: Secure,
) -> None:
    a = await secure.join("node-a", await secure.join_token("cpu"))
    b = await secure.join("node-b", await secure.join_token("gpu"))
    ch_a, agent_a = await registered(secure, a, ["cpu"])
    ch_b, agent_b = await registered(secure, b, ["gpu"])
    run_id = await run_in_pool(secure, "gpu")
    start = await agent_b.next("start_container")
    assert start.start_container.run_id == run_id
    # node-a lies about node-b's replica: exited 0, and ships lines for it.
    agent_a.send(container_status=status(run_id, rpb.CONTAINER_STATE_RUNNING))
    agent_a.send(container_status=status(run_id, rpb.CONTAINER_STATE_EXITED, 0))
    agent_a.send(log_batch=log_batch(run_id, "injected"))
    # node-b's own report goes through the same server afterwards, so once it
    # is seen, node-a's earlier messages have been handled.
    agent_b.send(container_status=status(run_id, rpb.CONTAINER_STATE_RUNNING))
    deadline = time.monotonic() + 10
    while (run := await get_run(secure, run_id)).replicas[0].state != rpb.CONTAINER_STATE_RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert run.status == rpb.RUN_STATUS_RUNNING
    assert await log_count(secure, run_id) == 0
    agent_b.send(log_batch=log_batch(run_id, "genuine"))
    agent_b.send(container_status=status(run_id, rpb.CONTAINER_STATE_EXITED, 0))
    while (run := await get_run(secure, run_id)).status != rpb.RUN_STATUS_SUCCEEDED:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await log_count(secure, run_id) == 1
    await ch_a.close()
    await ch_b.close()


async def until_run(secure: Secure, run_id: int, done, within: float = 10) -> rpb.Run:
    """The run once `done(run)` holds, polling with a deadline."""
    deadline = time.monotonic() + within
    while not done(run := await get_run(secure, run_id)):
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.05)
    return run


async def test_a_register_may_not_list_another_nodes_replica(secure: Secure) -> None:
    a = await secure.join("node-a", await secure.join_token("cpu"))
    b = await secure.join("node-b", await secure.join_token("gpu"))
    ch_b, agent_b = await registered(secure, b, ["gpu"])
    run_id = await run_in_pool(secure, "gpu")
    await agent_b.next("start_container")
    # node-a (re)connects claiming it holds node-b's replica, exited 0. The
    # containers of a Register are handled before Registered is sent.
    async with secure.node_channel(a) as ch_a:
        liar = await connect(
            ch_a, "node-a", ["cpu"], containers=[status(run_id, rpb.CONTAINER_STATE_EXITED, 0)]
        )
        await liar.next("registered")
        run = await get_run(secure, run_id)
        assert run.status != rpb.RUN_STATUS_SUCCEEDED and not run.replicas[0].HasField("exit_code")
        # Only node-b's word counts: it reports running, and the run (not
        # finished by the lie) shows that.
        agent_b.send(container_status=status(run_id, rpb.CONTAINER_STATE_RUNNING))
        run = await until_run(
            secure, run_id, lambda r: r.replicas[0].state != rpb.CONTAINER_STATE_PENDING
        )
        assert run.replicas[0].state == rpb.CONTAINER_STATE_RUNNING
        assert run.status == rpb.RUN_STATUS_RUNNING
    # The same Register from node-b itself does finish it (the message is sound).
    await ch_b.close()
    async with secure.node_channel(b) as ch_b:
        holder = await connect(
            ch_b, "node-b", ["gpu"], containers=[status(run_id, rpb.CONTAINER_STATE_EXITED, 0)]
        )
        await holder.next("registered")
        run = await until_run(secure, run_id, lambda r: r.status == rpb.RUN_STATUS_SUCCEEDED)
        assert run.replicas[0].exit_code == 0


async def test_a_finished_run_of_another_node_takes_no_reports_or_lines(secure: Secure) -> None:
    a = await secure.join("node-a", await secure.join_token("cpu"))
    b = await secure.join("node-b", await secure.join_token("gpu"))
    ch_a, agent_a = await registered(secure, a, ["cpu"])
    ch_b, agent_b = await registered(secure, b, ["gpu"])
    run_id = await run_in_pool(secure, "gpu")
    await agent_b.next("start_container")
    agent_b.send(container_status=status(run_id, rpb.CONTAINER_STATE_RUNNING))
    agent_b.send(log_batch=log_batch(run_id, "genuine"))
    agent_b.send(container_status=status(run_id, rpb.CONTAINER_STATE_EXITED, 0))
    await until_run(secure, run_id, lambda r: r.status == rpb.RUN_STATUS_SUCCEEDED)
    assert await log_count(secure, run_id) == 1
    # The run is no longer active: these go through the store lookups.
    agent_a.send(log_batch=log_batch(run_id, "injected late", sequence=5))  # no duplicate
    agent_a.send(container_status=status(run_id, rpb.CONTAINER_STATE_EXITED, 3))
    # node-a's stream is read in order; a numbered batch is acknowledged only
    # after everything sent before it was handled.
    agent_a.send(log_batch=apb.LogBatch(batch_id=1))
    ack = await agent_a.next("log_batch_ack")
    assert ack.log_batch_ack.batch_id == 1
    assert await log_count(secure, run_id) == 1
    run = await get_run(secure, run_id)
    assert run.status == rpb.RUN_STATUS_SUCCEEDED and run.replicas[0].exit_code == 0
    # node-b, which held it, could still ship a late line of its own.
    agent_b.send(log_batch=log_batch(run_id, "late but genuine", sequence=9))
    agent_b.send(log_batch=apb.LogBatch(batch_id=1))
    await agent_b.next("log_batch_ack")
    assert await log_count(secure, run_id) == 2
    await ch_a.close()
    await ch_b.close()


async def test_removed_node_is_cut_off_and_its_runs_fail(secure: Secure) -> None:
    b = await secure.join("node-b", await secure.join_token("gpu"))
    ch_b, agent_b = await registered(secure, b, ["gpu"])
    run_id = await run_in_pool(secure, "gpu")
    await agent_b.next("start_container")
    started = time.monotonic()
    async with secure.channel() as admin:
        reply = await ngrpc.NodeServiceStub(admin).RemoveNode(npb.RemoveNodeRequest(name="node-b"))
    assert list(reply.failed_run_ids) == [run_id]
    teardown = await agent_b.next("teardown_run", within=1)
    assert teardown.teardown_run.run_id == run_id
    assert await agent_b.call.read() is grpc.aio.EOF  # stream cut
    assert time.monotonic() - started < 1.0
    run = await get_run(secure, run_id)
    assert run.status == rpb.RUN_STATUS_FAILED and "node node-b was removed" in run.status_reason
    # The old certificate no longer opens a stream.
    again = await connect(ch_b, "node-b", ["gpu"])
    detail = await expect_code(grpc.StatusCode.PERMISSION_DENIED, again.next("registered"))
    assert "revoked" in detail
    # Nor does it renew: a removed node cannot get a certificate past its removal.
    detail = await expect_code(
        grpc.StatusCode.PERMISSION_DENIED,
        agrpc.AgentServiceStub(ch_b).RenewCertificate(
            apb.RenewCertificateRequest(csr_pem=node_csr(new_key(), "node-b").decode())
        ),
    )
    assert "revoked" in detail
    await ch_b.close()
    async with secure.channel() as admin:
        await expect_code(
            grpc.StatusCode.NOT_FOUND,
            ngrpc.NodeServiceStub(admin).RemoveNode(npb.RemoveNodeRequest(name="node-b")),
        )
    # A new join token makes it a node again (its certificate postdates the removal).
    fresh = await secure.join("node-b", await secure.join_token("gpu"))
    deadline = time.monotonic() + 5
    while True:
        async with secure.node_channel(fresh) as ch:
            agent = await connect(ch, "node-b", ["gpu"])
            try:
                await agent.next("registered")
                break
            except grpc.aio.AioRpcError:  # valid from the next whole second
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)


async def test_renewal_keeps_name_and_pools_with_a_new_key(secure: Secure) -> None:
    ident = await secure.join("node-a", await secure.join_token("cpu"))
    key = new_key()
    async with secure.node_channel(ident) as ch:
        reply = await agrpc.AgentServiceStub(ch).RenewCertificate(
            apb.RenewCertificateRequest(csr_pem=node_csr(key, "node-a").decode())
        )
        renewed = parse_node_cert(reply.certificate_pem.encode())
        assert (renewed.node, renewed.pools) == ("node-a", ("cpu",))
        assert renewed.serial != parse_node_cert(ident.cert).serial
        await expect_code(
            grpc.StatusCode.INVALID_ARGUMENT,
            agrpc.AgentServiceStub(ch).RenewCertificate(
                apb.RenewCertificateRequest(csr_pem=node_csr(key, "node-b").decode())
            ),
        )
    new = NodeIdentity("node-a", key_pem(key), reply.certificate_pem.encode(), ident.reply)
    channel, _ = await registered(secure, new, ["cpu"])
    await channel.close()
