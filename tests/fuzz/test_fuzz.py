"""Fuzzing every gRPC method of a secure control plane with random, well-formed requests.

The services and their request types come from the server itself (reflection);
requests are built from those descriptors (`tests/fuzz/generator.py`). Besides
the unary and server-streaming calls, node agents' Connect streams are fuzzed:
nodes join with join tokens, then open streams with their certificates and
send random ConnectRequest messages (a Register first, mostly valid, sometimes
not), while runs are placed on them and image requests wait for their answers.

What must hold: no call ends UNKNOWN or INTERNAL, the control plane logs no
unexpected error (an exception inside a stream reader or the reconcile loop
does not reach the client as a status), and afterwards it still serves:
health SERVING, and a normal codespec, run and GetRun work.

Seeded: MUSTER_FUZZ_SEED=N replays a run's requests (the seed is printed; how
concurrent calls interleave still varies); MUSTER_FUZZ_CALLS sets the number
of calls besides the agent streams.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.core.auth import NODE, requirement
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.fuzz.agents import POOL, Nodes, agent_stream, steady_agent
from tests.fuzz.calls import ErrorLog, Method, Tally, call_once, discover
from tests.fuzz.generator import Generator, Known
from tests.security.conftest import NodeIdentity, Secure

SEED = int(os.environ.get("MUSTER_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CALLS = int(os.environ.get("MUSTER_FUZZ_CALLS") or 10_000)
CONCURRENCY = 24
STREAM_NODES = 4


@dataclass
class Fuzz:
    """Everything one fuzz run shares: its nodes, tokens, channels and tasks."""

    secure: Secure
    tag: str
    known: Known
    tokens: dict[str, str]
    steady: NodeIdentity
    idents: list[NodeIdentity]
    nodes: Nodes
    victim: NodeIdentity
    """A node that RemoveNode may really remove: requests naming the nodes the
    fuzz needs are aimed at it instead (a removed node's certificate is dead)."""
    tally: Tally = field(default_factory=Tally)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    api: grpc.aio.Channel = field(init=False)
    node_channels: dict[str, grpc.aio.Channel] = field(init=False)

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.secure.admin_token}"),)

    def open_channels(self) -> None:
        self.api = self.secure.channel(token="")
        self.node_channels = {i.name: self.secure.node_channel(i) for i in self.nodes.identities}

    async def close(self) -> None:
        self.stop.set()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        for channel in self.node_channels.values():
            await channel.close()
        await self.api.close()


async def join(secure: Secure, name: str) -> NodeIdentity:
    return await secure.join(name, await secure.join_token(POOL))


async def prepare(secure: Secure, rng: random.Random) -> Fuzz:
    """Tokens for each role and the joined nodes: a steady one, the stream fuzzers, a victim."""
    tag = f"{rng.randrange(16**6):06x}"
    known = Known()
    tokens = {
        "admin": secure.admin_token,
        "user": await secure.token(f"fuzz-user-{tag}", "user"),
        "reader": await secure.token(f"fuzz-reader-{tag}", "reader"),
    }
    steady = await join(secure, f"fuzz-steady-{tag}")
    idents = [await join(secure, f"fuzz-node-{tag}-{i}") for i in range(STREAM_NODES)]
    nodes = Nodes([steady, *idents])
    known.add(POOL, "cpu", "job", "worker", *(i.name for i in nodes.identities))
    victim = await join(secure, f"fuzz-victim-{tag}")
    known.add(victim.name, "registry.example:5000")
    return Fuzz(secure, tag, known, tokens, steady, idents, nodes, victim)


async def seed_cluster(fz: Fuzz) -> None:
    """Something real to find: codespecs, runs placed on the fuzz nodes (the
    steady agent, started here, is ready before the runs are made)."""
    codespecs = cgrpc.CodespecServiceStub(fz.api)
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(
            codespec=cpb.Codespec(name="fuzz-job", image="localhost/x:1", command=["true"])
        ),
        metadata=fz.admin,
    )
    await codespecs.CreateCodespec(
        cpb.CreateCodespecRequest(
            codespec=cpb.Codespec(
                name="fuzz-worker",
                kind=cpb.CODESPEC_KIND_WORKER,
                image="localhost/x:1",
                endpoints={"http": 8080},
            )
        ),
        metadata=fz.admin,
    )
    fz.known.add("fuzz-job", "fuzz-worker", "fuzz-job/versions/1")
    steady = steady_agent(fz.secure, fz.steady, fz.nodes, fz.tally, fz.stop, SEED + 1)
    fz.background.append(asyncio.create_task(steady))
    await wait_until_ready(fz, fz.steady.name)
    await create_runs(fz, 12)


async def wait_until_ready(fz: Fuzz, name: str) -> None:
    node_service = ngrpc.NodeServiceStub(fz.api)
    deadline = time.monotonic() + 10
    while not any(
        n.name == name and n.status == npb.NODE_STATUS_READY
        for n in (await node_service.ListNodes(npb.ListNodesRequest(), metadata=fz.admin)).nodes
    ):
        assert time.monotonic() < deadline, "the steady fuzz agent did not register"
        await asyncio.sleep(0.05)


async def create_runs(fz: Fuzz, count: int) -> None:
    """`count` runs in the fuzz pool, every other one with two workers."""
    runs = rgrpc.RunServiceStub(fz.api)
    for i in range(count):
        run = rpb.Run(
            job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="fuzz-job"), node_pool=POOL)
        )
        if i % 2:
            run.worker.CopyFrom(
                rpb.RunCodeTarget(
                    codespec=rpb.CodespecRef(named="fuzz-worker"), node_pool=POOL, replicas=2
                )
            )
        created = await runs.CreateRun(rpb.CreateRunRequest(run=run), metadata=fz.admin)
        fz.known.add(created.run.id)


def start_stream_fuzzers(fz: Fuzz) -> None:
    """One task per stream node: Connect streams, one after another, until stopped."""

    async def stream_fuzzer(ident: NodeIdentity, seed: int) -> None:
        srng = random.Random(seed)
        sgen = Generator(srng, fz.known, huge=0.001)
        while not fz.stop.is_set():
            await agent_stream(
                fz.secure,
                ident,
                fz.nodes,
                fz.tally,
                srng,
                sgen,
                srng.randint(0, 80),
                srng.choice(["a", "a", "a", "b"]),
                linger=srng.choice([0, 0, 0, 1.0]),
            )

    for i, ident in enumerate(fz.idents):
        fz.background.append(asyncio.create_task(stream_fuzzer(ident, SEED + 100 + i)))


def credentials(
    fz: Fuzz, path: str, rng: random.Random
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """Whom a call comes from: a node for node methods; otherwise mostly the
    admin, sometimes a user, a reader, nobody or a garbage token."""
    if requirement(path) == NODE:
        ident = rng.choice(fz.nodes.identities)
        return fz.node_channels[ident.name], ()
    who = rng.choices(["admin", "user", "reader", "none", "garbage"], [80, 6, 6, 4, 4])[0]
    if who == "none":
        return fz.api, ()
    if who == "garbage":
        junk = "".join(rng.choice("abcXYZ_-~+/=0") for _ in range(40))
        return fz.api, (("authorization", f"Bearer {junk}"),)
    return fz.api, (("authorization", f"Bearer {fz.tokens[who]}"),)


async def call_everything(fz: Fuzz, methods: list[Method]) -> None:
    """CALLS random calls, CONCURRENCY at a time, each tallied."""
    remaining = iter(range(CALLS))
    protected = {i.name for i in fz.nodes.identities}

    async def worker(index: int) -> None:
        wrng = random.Random(SEED * 1000 + index)
        wgen = Generator(wrng, fz.known, avoid=lambda s: s == "admin")
        for _ in remaining:
            method = wrng.choice(methods)
            request = wgen.message(method.request)
            if method.path.endswith("/RemoveNode") and request.name in protected:  # type: ignore[attr-defined]
                request.name = fz.victim.name  # type: ignore[attr-defined]
            channel, metadata = credentials(fz, method.path, wrng)
            code, details = await call_once(channel, method, request, metadata, wrng, wgen)
            fz.tally.add(method.path, code, details)

    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


def report(fz: Fuzz, methods: list[Method], errors: ErrorLog, elapsed: float) -> None:
    """Print what was called and how it ended; fail on any finding."""
    tally, nodes = fz.tally, fz.nodes
    unary_calls = sum(tally.codes.values()) - sum(nodes.streams.values())
    print(
        f"{unary_calls} calls over {len(methods)} methods, "
        f"{sum(nodes.streams.values())} agent streams with {tally.messages} messages, "
        f"{elapsed:.1f} s; {errors.late_answers} answers to calls the client had left"
    )
    for code, count in tally.codes.most_common():
        print(f"  {code:<45} {count}")
    print("  per method:")
    for path in sorted(tally.per_method):
        summary = ", ".join(f"{c} {n}" for c, n in tally.per_method[path].most_common())
        print(f"    {path}: {summary}")
    paths = {m.path for m in methods}
    assert not tally.forbidden, "\n".join(tally.forbidden[:30])
    assert unary_calls >= CALLS
    assert set(tally.per_method) >= paths, paths - set(tally.per_method)
    assert not errors.records, "\n".join(errors.records[:30])


async def check_still_serving(fz: Fuzz) -> None:
    """Health SERVING, and a normal codespec, run and GetRun work."""
    health = health_pb2_grpc.HealthStub(fz.api)
    for service in ["", "muster.v1.RunService", "muster.v1.AgentService"]:
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    name = f"after-fuzz-{fz.tag}"
    made = await cgrpc.CodespecServiceStub(fz.api).CreateCodespec(
        cpb.CreateCodespecRequest(
            codespec=cpb.Codespec(name=name, image="localhost/muster-busybox:latest")
        ),
        metadata=fz.admin,
    )
    assert made.created and made.codespec.version == 1
    runs = rgrpc.RunServiceStub(fz.api)
    created = await runs.CreateRun(
        rpb.CreateRunRequest(
            run=rpb.Run(job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named=name)))
        ),
        metadata=fz.admin,
    )
    got = await runs.GetRun(rpb.GetRunRequest(run_id=created.run.id), metadata=fz.admin)
    assert got.run.id == created.run.id
    assert got.run.status == rpb.RUN_STATUS_PENDING
    assert got.run.job.resolved_codespec.name == name


async def test_fuzz_every_method(secure: Secure) -> None:
    print(f"\nfuzz seed {SEED} (MUSTER_FUZZ_SEED={SEED} replays its requests), {CALLS} calls")
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    started = time.monotonic()
    fz = await prepare(secure, random.Random(SEED))
    fz.open_channels()
    try:
        methods = await discover(fz.api)
        paths = {m.path for m in methods}
        assert "/muster.v1.AgentService/Connect" in paths and len(methods) >= 30, paths
        await seed_cluster(fz)
        start_stream_fuzzers(fz)
        await call_everything(fz, methods)
        fz.stop.set()
        await asyncio.wait_for(asyncio.gather(*fz.background), 30)
        report(fz, methods, errors, time.monotonic() - started)
        await check_still_serving(fz)
    finally:
        await fz.close()
        logging.getLogger().removeHandler(errors)
