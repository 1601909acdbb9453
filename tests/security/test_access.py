"""Who may call what, over real TLS: every method the server offers (found by
reflection) refuses a call without credentials and a call whose role is too
low, and admits the role it names."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.core.auth import JOIN, NODE, POLICY, PUBLIC, Role, requirement
from muster.v1 import agent_pb2, auth_pb2, buffer_pb2, codespec_pb2, image_pb2, node_pb2, run_pb2
from muster.v1 import auth_pb2 as tpb
from muster.v1 import auth_pb2_grpc as tgrpc
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.security.conftest import Secure

REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


async def offered_methods(channel: grpc.aio.Channel) -> list[tuple[str, bool, bool]]:
    """(full method path, client streaming, server streaming) of every service
    the server lists by reflection (reflection itself needs no token)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services = []
    async for reply in stub.ServerReflectionInfo(ask()):
        services = [s.name for s in reply.list_services_response.service]
    pool = descriptor_pool.Default()
    methods = []
    for name in services:
        if name.startswith("grpc."):
            continue
        for m in pool.FindServiceByName(name).methods:
            methods.append((f"/{name}/{m.name}", m.client_streaming, m.server_streaming))
    return methods


async def call(
    channel: grpc.aio.Channel, method: str, client_stream: bool, server_stream: bool
) -> grpc.StatusCode:
    """Call any method with an empty request; the status it ends with."""
    codec = {"request_serializer": bytes, "response_deserializer": bytes}
    try:
        if client_stream and server_stream:

            async def empty() -> AsyncIterator[bytes]:
                return
                yield

            async for _ in channel.stream_stream(method, **codec)(empty(), timeout=5):
                pass
        elif server_stream:
            async for _ in channel.unary_stream(method, **codec)(b"", timeout=5):
                pass
        else:
            await channel.unary_unary(method, **codec)(b"", timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_policy_names_every_method_of_every_service() -> None:
    pool = descriptor_pool.Default()
    for module in (agent_pb2, auth_pb2, buffer_pb2, codespec_pb2, image_pb2, node_pb2, run_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in pool.FindServiceByName(service.full_name).methods:
                assert requirement(f"/{service.full_name}/{m.name}") is not None, m.full_name
    assert requirement("/muster.v1.RunService/NoSuchMethod") is None  # default deny


async def test_every_method_refuses_missing_and_too_low_credentials(secure: Secure) -> None:
    tokens = {role: await secure.token(f"t-{role.label}", role.label) for role in Role}
    async with secure.channel("") as anonymous:
        methods = await offered_methods(anonymous)
        assert len(methods) == sum(1 for m in POLICY if m.startswith("/muster.v1."))
        for method, cs, ss in methods:
            need = requirement(method)
            code = await call(anonymous, method, cs, ss)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code)
            if need == JOIN:
                continue  # the join token in the request is the credential (test_nodes)
            lower = [r for r in Role if need == NODE or (isinstance(need, Role) and r < need)]
            for role in lower:
                async with secure.channel(tokens[role]) as ch:
                    code = await call(ch, method, cs, ss)
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method, role, code)
            if isinstance(need, Role):
                for role in (r for r in Role if r >= need):
                    async with secure.channel(tokens[role]) as ch:
                        code = await call(ch, method, cs, ss)
                    # Admitted: whatever an empty request earns, never a refusal
                    # and never UNKNOWN/INTERNAL.
                    assert code not in REFUSALS | {
                        grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.INTERNAL,
                    }, (method, role, code)


async def test_health_and_reflection_need_no_token(secure: Secure) -> None:
    assert requirement("/grpc.health.v1.Health/Check") == PUBLIC
    async with secure.channel("") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert await offered_methods(ch)


async def test_plaintext_client_cannot_talk_to_the_tls_port(secure: Secure) -> None:
    for address in (secure.api, secure.agents):
        async with grpc.aio.insecure_channel(address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_without_a_node_certificate_cannot_reach_the_agent_address(
    secure: Secure,
) -> None:
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(secure.ca),
        grpc.access_token_call_credentials(secure.admin_token),
    )
    async with grpc.aio.secure_channel(secure.agents, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the mTLS handshake fails


async def test_revoked_token_is_refused_by_the_next_call(secure: Secure) -> None:
    secret = await secure.token("alice", "user")
    async with secure.channel(secret) as ch:
        stub = cgrpc.CodespecServiceStub(ch)
        await stub.ListCodespecs(codespec_pb2.ListCodespecsRequest())
        async with secure.channel() as admin:
            await tgrpc.TokenServiceStub(admin).RevokeToken(tpb.RevokeTokenRequest(name="alice"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListCodespecs(codespec_pb2.ListCodespecsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.value.details() or "")


async def test_expired_token_is_refused(secure: Secure) -> None:
    secret = await secure.token("brief", "reader", ttl=1)
    async with secure.channel(secret) as ch:
        stub = tgrpc.TokenServiceStub(ch)
        me = await stub.WhoAmI(tpb.WhoAmIRequest())
        assert (me.name, me.role) == ("brief", tpb.ROLE_READER) and me.HasField("expires_at")
        deadline = me.expires_at.ToDatetime().timestamp() + 5
        while True:
            try:
                await stub.WhoAmI(tpb.WhoAmIRequest())
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "expired" in (err.details() or "")
                break
            assert time.time() < deadline, "the token outlived its TTL"
            await asyncio.sleep(0.1)


async def test_tokens_are_stored_only_as_hashes(secure: Secure, tmp_path) -> None:
    secret = await secure.token("hashed", "user")
    db = sqlite3.connect(tmp_path / "cp.db")
    rows = dict(db.execute("SELECT name, hash FROM tokens").fetchall())
    db.close()
    assert rows["hashed"] == hashlib.sha256(secret.encode()).hexdigest()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cp.db*"))
    assert secret.encode() not in raw and secure.admin_token.encode() not in raw
    assert len(secret) >= 4 + 43  # prefix + 256 bits in base64url


async def test_bad_token_requests_are_refused_and_store_nothing(secure: Secure) -> None:
    async with secure.channel() as ch:
        stub = tgrpc.TokenServiceStub(ch)
        bad = [
            (tpb.CreateTokenRequest(name="Bad Name", role=tpb.ROLE_USER), "INVALID_ARGUMENT"),
            (tpb.CreateTokenRequest(name="norole"), "INVALID_ARGUMENT"),
            (
                tpb.CreateTokenRequest(name="x", role=tpb.ROLE_USER, ttl_seconds=-1),
                "INVALID_ARGUMENT",
            ),
            (tpb.CreateTokenRequest(name="admin", role=tpb.ROLE_USER), "ALREADY_EXISTS"),
        ]
        for request, code in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateToken(request)
            assert err.value.code().name == code, request
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RevokeToken(tpb.RevokeTokenRequest(name="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        names = [t.name for t in (await stub.ListTokens(tpb.ListTokensRequest())).tokens]
    assert names == ["admin"]


async def test_a_revoked_token_ends_its_open_watch_stream(secure: Secure) -> None:
    secret = await secure.token("watcher", "reader")
    async with secure.channel() as admin:
        await cgrpc.CodespecServiceStub(admin).CreateCodespec(
            codespec_pb2.CreateCodespecRequest(codespec=codespec_pb2.Codespec(name="j", image="i"))
        )
        run = rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j")))
        run_id = (await rgrpc.RunServiceStub(admin).CreateRun(rpb.CreateRunRequest(run=run))).run.id
        async with secure.channel(secret) as ch:
            watch = rgrpc.RunServiceStub(ch).WatchRun(rpb.WatchRunRequest(run_id=run_id))
            first = await watch.read()
            assert first.run.status == rpb.RUN_STATUS_PENDING
            await tgrpc.TokenServiceStub(admin).RevokeToken(tpb.RevokeTokenRequest(name="watcher"))
            await rgrpc.RunServiceStub(admin).CancelRun(rpb.CancelRunRequest(run_id=run_id))
            seen: list[rpb.Run] = []

            async def after_revocation() -> None:
                """What still arrives: changes sent before the revocation
                (the scheduler may have said why the run waits), never the
                cancel that came after it; then the refusal."""
                while True:
                    seen.append((await watch.read()).run)

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(after_revocation(), 10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert all(r.status == rpb.RUN_STATUS_PENDING for r in seen), "a revoked token saw news"
