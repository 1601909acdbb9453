"""Images end to end without Podman: a real control plane, real agents (their
own code) over real gRPC, and the agents' fake runtime with its simulated
registry. Pull policies, credentials from `registry login`, PULLING with
progress, digests, the readiness clock, failed pulls, and ImageService."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from agent.app import run_agent
from agent.config import parse_args
from agent.connection import Backoff
from agent.runtime_fake import FakeRuntime
from controlplane.core.nodes import Liveness
from controlplane.server import ControlPlane, start
from controlplane.services.orchestrator import Settings
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import image_pb2 as ipb
from muster.v1 import image_pb2_grpc as igrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.conftest import free_port
from tests.integration.test_cluster_fake_runtime import container_of, until

READINESS = timedelta(seconds=1)
SETTINGS = Settings(
    heartbeat_interval=timedelta(seconds=1), liveness=Liveness(), readiness_timeout=READINESS
)
REGISTRY = "registry.example:5000"
PRIVATE = f"{REGISTRY}/team/worker:1"
JOB = "localhost/job:1"
PASSWORD = "fleet-Pa55word-3c1d"


class Nodes:
    """Agents in this event loop, each on a fake runtime whose images are absent
    unless the test adds them."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.runtimes: dict[str, FakeRuntime] = {}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, pool: str) -> FakeRuntime:
        runtime = FakeRuntime(node_name=name, all_images_exist=False)
        config = parse_args(
            [
                *("--insecure", "--server", self.address, "--node-name", name, "--pool", pool),
                *("--cpus", "4", "--memory", "8Gi"),
            ]
        )
        self.runtimes[name] = runtime
        self.tasks.append(
            asyncio.create_task(
                run_agent(config, runtime=runtime, stop=self.stop, backoff=Backoff(maximum=0.3))
            )
        )
        return runtime

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, Nodes, grpc.aio.Channel]]:
    address = f"127.0.0.1:{free_port()}"
    plane = await start(address, tmp_path / "cp.db", SETTINGS)
    nodes = Nodes(address)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            yield plane, nodes, ch
    finally:
        await nodes.close()
        await plane.stop(grace=0.2)


async def ready_nodes(plane: ControlPlane, count: int) -> None:
    await until(lambda: len(plane.orchestrator.ready_agents()) >= count, 10, f"{count} Ready nodes")


async def codespecs(ch: grpc.aio.Channel, worker_image: str = PRIVATE) -> None:
    stub = cgrpc.CodespecServiceStub(ch)
    await stub.CreateCodespec(
        cpb.CreateCodespecRequest(
            codespec=cpb.Codespec(
                name="w", image=worker_image, kind=cpb.CODESPEC_KIND_WORKER, endpoints={"http": 80}
            )
        )
    )
    await stub.CreateCodespec(cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image=JOB)))


async def create_run(ch: grpc.aio.Channel, policy: int = 0) -> int:
    run = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        worker=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="w"), node_pool="gpu"),
        pull_policy=policy,  # type: ignore[arg-type]
    )
    return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=run))).run.id


async def get_run(ch: grpc.aio.Channel, run_id: int) -> rpb.Run:
    return (await rgrpc.RunServiceStub(ch).GetRun(rpb.GetRunRequest(run_id=run_id))).run


async def run_when(ch: grpc.aio.Channel, run_id: int, check, what: str, within: float = 10):
    found: list[rpb.Run] = []

    async def probe() -> bool:
        run = await get_run(ch, run_id)
        found[:] = [run]
        return bool(check(run))

    await until(probe, within, what)
    return found[0]


async def login(ch: grpc.aio.Channel, password: str = PASSWORD) -> None:
    await igrpc.RegistryServiceStub(ch).Login(
        ipb.LoginRequest(registry=REGISTRY, username="bob", password=password)
    )


async def test_a_private_image_is_pulled_with_the_stored_login_and_pull_time_is_not_counted(
    cluster,
) -> None:
    plane, nodes, ch = cluster
    gpu, cpu = nodes.add("n-gpu", "gpu"), nodes.add("n-cpu", "cpu")
    digest = gpu.publish(PRIVATE)
    gpu.require_credentials(REGISTRY, "bob", PASSWORD)
    gpu.hold_pulls(PRIVATE)
    gpu.pull_progress[PRIVATE] = [(45_000_000, 120_000_000)]
    gpu.pull_delays[PRIVATE] = 1.5
    cpu.add_image(JOB)
    await login(ch)
    await codespecs(ch)
    await ready_nodes(plane, 2)
    run_id = await create_run(ch)

    pulling = await run_when(
        ch, run_id, lambda r: r.replicas[0].state == rpb.CONTAINER_STATE_PULLING, "PULLING"
    )
    assert pulling.pull_policy == rpb.PULL_POLICY_MISSING
    # The pull outlasts the readiness timeout several times over: the run waits.
    held_until = time.monotonic() + 3 * READINESS.total_seconds()
    while time.monotonic() < held_until:
        run = await get_run(ch, run_id)
        assert run.status == rpb.RUN_STATUS_PENDING, run.status_reason
        assert run.replicas[0].state == rpb.CONTAINER_STATE_PULLING
        await asyncio.sleep(0.1)
    gpu.release_pulls(PRIVATE)
    progress = await run_when(
        ch, run_id, lambda r: r.replicas[0].pull_bytes_done == 45_000_000, "pull progress"
    )
    assert progress.replicas[0].pull_bytes_total == 120_000_000
    done = await run_when(
        ch,
        run_id,
        lambda r: r.status == rpb.RUN_STATUS_RUNNING,
        "the job's release",
    )
    cpu.exit(container_of(done, "job"), 0)
    done = await run_when(ch, run_id, lambda r: r.status == rpb.RUN_STATUS_SUCCEEDED, "success")
    assert done.replicas[0].image_digest == digest
    assert done.replicas[1].image_digest  # the job's image was there: its digest all the same
    assert [(p.image, p.auth.username, p.auth.password) for p in gpu.pulls] == [  # type: ignore[union-attr]
        (PRIVATE, "bob", PASSWORD)
    ]
    assert cpu.pulls == []  # missing: the job's image was on its node already


async def test_a_failed_pull_fails_the_run_at_once_naming_image_registry_and_node(
    cluster,
) -> None:
    plane, nodes, ch = cluster
    gpu, cpu = nodes.add("n-gpu", "gpu"), nodes.add("n-cpu", "cpu")
    gpu.publish(PRIVATE)
    gpu.require_credentials(REGISTRY, "bob", PASSWORD)
    cpu.add_image(JOB)
    await login(ch, "not-" + PASSWORD)
    await codespecs(ch)
    await ready_nodes(plane, 2)
    began = time.monotonic()
    run_id = await create_run(ch)
    failed = await run_when(ch, run_id, lambda r: r.status == rpb.RUN_STATUS_FAILED, "failure")
    assert time.monotonic() - began < 5
    reason = failed.status_reason
    assert reason.startswith("worker 0 failed to start on n-gpu: ")
    for part in (PRIVATE, REGISTRY, "n-gpu", "unauthorized"):
        assert part in reason, reason
    assert PASSWORD not in reason


async def test_always_pulls_a_present_image_and_never_pulls_nothing(cluster) -> None:
    plane, nodes, ch = cluster
    gpu, cpu = nodes.add("n-gpu", "gpu"), nodes.add("n-cpu", "cpu")
    gpu.add_image(PRIVATE, "sha256:" + "0" * 64)  # an older push of the tag
    moved = gpu.publish(PRIVATE)
    cpu.add_image(JOB)
    cpu.publish(JOB)
    await codespecs(ch)
    await ready_nodes(plane, 2)
    run_id = await create_run(ch, rpb.PULL_POLICY_ALWAYS)
    running = await run_when(ch, run_id, lambda r: r.status == rpb.RUN_STATUS_RUNNING, "release")
    assert running.replicas[0].image_digest == moved  # the tag moved: always fetched it
    assert gpu.pull_counts[PRIVATE] == 1 and cpu.pull_counts[JOB] == 1

    gpu.remove_image(PRIVATE)
    never = await create_run(ch, rpb.PULL_POLICY_NEVER)
    failed = await run_when(ch, never, lambda r: r.status == rpb.RUN_STATUS_FAILED, "failure")
    assert PRIVATE in failed.status_reason and "n-gpu" in failed.status_reason
    assert gpu.pull_counts[PRIVATE] == 1  # never: no pull was tried


async def test_image_pull_and_list_across_real_agents(cluster) -> None:
    plane, nodes, ch = cluster
    a, b = nodes.add("a", "gpu"), nodes.add("b", "gpu")
    c = nodes.add("c", "cpu")
    digest = a.publish(PRIVATE)
    b.publish(PRIVATE, digest)
    b.unreachable.add(REGISTRY)
    for runtime in (a, b):
        runtime.require_credentials(REGISTRY, "bob", PASSWORD)
    await login(ch)
    await ready_nodes(plane, 3)
    stub = igrpc.ImageServiceStub(ch)
    reply = await stub.PullImage(ipb.PullImageRequest(image=PRIVATE, pool="gpu"), timeout=20)
    assert [(r.node, r.digest, r.pulled) for r in reply.results] == [
        ("a", digest, True),
        ("b", "", False),
    ]
    assert reply.results[0].error == ""
    assert REGISTRY in reply.results[1].error and "b" in reply.results[1].error
    assert c.pulls == []  # another pool
    again = await stub.PullImage(ipb.PullImageRequest(image=PRIVATE, pool="gpu"), timeout=20)
    assert (again.results[0].pulled, again.results[0].digest) == (False, digest)  # present

    listed = await stub.ListImages(ipb.ListImagesRequest(), timeout=20)
    by_node = {n.node: n for n in listed.nodes}
    assert sorted(by_node) == ["a", "b", "c"]
    assert [i.digest for i in by_node["a"].images] == [digest]
    assert list(by_node["b"].images) == [] and by_node["b"].error == ""
