"""Images over real gRPC with hand-driven agents (the Connect protocol spoken
by the test): pull policies and registry credentials in StartContainer, only
for the node that pulls; PULLING with progress and digests in GetRun; a failed
pull fails the run at once; ImageService across nodes, one of which never
answers; RegistryService never shows a password back."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from muster.v1 import agent_pb2 as apb
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import image_pb2 as ipb
from muster.v1 import image_pb2_grpc as igrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.controlplane.conftest import plane_with
from tests.security.conftest import FakeAgent, connect
from tests.waiting import until

PASSWORD = "pw-Only-The-Puller-Sees-7f3a"
PRIVATE = "registry.example:5000/team/worker:1"
DIGEST = "sha256:" + "c" * 64


async def agent(ch: grpc.aio.Channel, name: str, pool: str) -> FakeAgent:
    fake = await connect(ch, name, [pool])
    await fake.next("registered")
    return fake


def status(start: apb.StartContainer, state: int, **fields: object) -> apb.ContainerStatus:
    now = Timestamp()
    now.GetCurrentTime()
    return apb.ContainerStatus(
        run_id=start.run_id,
        role=start.role,
        replica=start.replica,
        container_name=start.container_name,
        state=state,  # type: ignore[arg-type]
        generation=start.generation,
        time=now,
        **fields,  # type: ignore[arg-type]
    )


async def codespecs(ch: grpc.aio.Channel, worker_image: str, job_image: str) -> None:
    stub = cgrpc.CodespecServiceStub(ch)
    await stub.CreateCodespec(
        cpb.CreateCodespecRequest(
            codespec=cpb.Codespec(name="w", image=worker_image, kind=cpb.CODESPEC_KIND_WORKER)
        )
    )
    await stub.CreateCodespec(
        cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image=job_image))
    )


async def create_run(ch: grpc.aio.Channel, policy: int = 0, **run: object) -> rpb.Run:
    message = rpb.Run(
        job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="j"), node_pool="cpu"),
        worker=rpb.RunCodeTarget(codespec=rpb.CodespecRef(named="w"), node_pool="gpu"),
        pull_policy=policy,  # type: ignore[arg-type]
        **run,  # type: ignore[arg-type]
    )
    return (await rgrpc.RunServiceStub(ch).CreateRun(rpb.CreateRunRequest(run=message))).run


async def get_run(ch: grpc.aio.Channel, run_id: int) -> rpb.Run:
    return (await rgrpc.RunServiceStub(ch).GetRun(rpb.GetRunRequest(run_id=run_id))).run


async def until_run(ch: grpc.aio.Channel, run_id: int, check, what: str, within: float = 10):
    seen: list[rpb.Run] = []

    async def passing() -> rpb.Run | None:
        seen.append(await get_run(ch, run_id))
        return seen[-1] if check(seen[-1]) else None

    return await until(passing, within, lambda: f"{what}: {seen[-1] if seen else None}")


async def login(ch: grpc.aio.Channel, registry: str, user: str, password: str) -> str:
    reply = await igrpc.RegistryServiceStub(ch).Login(
        ipb.LoginRequest(registry=registry, username=user, password=password)
    )
    return reply.registry


async def worker_pulls_then_runs(ch, gpu, worker: apb.StartContainer, run_id: int) -> None:
    """The worker reports pulling (then with progress, which GetRun shows), then
    creating and running, ready, with the image's digest."""
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_PULLING))
    gpu.send(
        container_status=status(
            worker,
            rpb.CONTAINER_STATE_PULLING,
            pull_bytes_done=45_000_000,
            pull_bytes_total=120_000_000,
        )
    )
    pulling = await until_run(
        ch,
        run_id,
        lambda r: r.replicas[0].pull_bytes_done == 45_000_000,
        "pull progress in GetRun",
    )
    w = pulling.replicas[0]
    assert (w.state, w.pull_bytes_total, w.image_digest) == (
        rpb.CONTAINER_STATE_PULLING,
        120_000_000,
        "",
    )
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_CREATING, image_digest=DIGEST))
    gpu.send(
        container_status=status(
            worker, rpb.CONTAINER_STATE_RUNNING, ready=True, image_digest=DIGEST
        )
    )


async def assert_password_only_where_pulled(ch, cpu, done: rpb.Run) -> None:
    """The password went to the node that pulls and nowhere else: not to the
    other node, not into the run, not into the registry list."""
    assert not any(PASSWORD.encode() in m.SerializeToString() for m in cpu.received)
    assert PASSWORD.encode() not in done.SerializeToString()
    listed = await igrpc.RegistryServiceStub(ch).ListRegistries(ipb.ListRegistriesRequest())
    assert [(r.registry, r.username) for r in listed.registries] == [
        ("docker.io", "hub"),
        ("registry.example:5000", "bob"),
    ]
    assert PASSWORD.encode() not in listed.SerializeToString()


async def test_policy_and_credentials_reach_only_the_node_that_pulls(ch) -> None:
    assert await login(ch, "Registry.Example:5000", "bob", PASSWORD) == "registry.example:5000"
    await login(ch, "docker.io", "hub", "hub-" + PASSWORD)
    await codespecs(ch, PRIVATE, "localhost/job:1")
    gpu, cpu = await agent(ch, "n-gpu", "gpu"), await agent(ch, "n-cpu", "cpu")
    run = await create_run(ch, rpb.PULL_POLICY_ALWAYS)
    assert run.pull_policy == rpb.PULL_POLICY_ALWAYS

    worker = (await gpu.next("start_container")).start_container
    assert worker.image == PRIVATE and worker.pull_policy == rpb.PULL_POLICY_ALWAYS
    assert [(c.registry, c.username, c.password) for c in worker.registry_credentials] == [
        ("registry.example:5000", "bob", PASSWORD)
    ]

    await worker_pulls_then_runs(ch, gpu, worker, run.id)

    job = (await cpu.next("start_container")).start_container
    assert job.pull_policy == rpb.PULL_POLICY_ALWAYS
    assert list(job.registry_credentials) == []  # localhost/...: no login for that registry
    cpu.send(
        container_status=status(job, rpb.CONTAINER_STATE_RUNNING, image_digest="sha256:" + "d" * 64)
    )
    cpu.send(container_status=status(job, rpb.CONTAINER_STATE_EXITED, exit_code=0))
    done = await until_run(ch, run.id, lambda r: r.status == rpb.RUN_STATUS_SUCCEEDED, "success")
    assert [r.image_digest for r in done.replicas] == [DIGEST, "sha256:" + "d" * 64]
    assert [r.pull_bytes_done for r in done.replicas] == [0, 0]
    assert any(e.message.startswith("worker 0 pulling image " + PRIVATE) for e in done.events)

    await assert_password_only_where_pulled(ch, cpu, done)
    for fake in (gpu, cpu):
        fake.outbox.put_nowait(None)


async def test_the_default_policy_applies_to_runs_that_name_none(tmp_path: Path) -> None:
    cp = await plane_with(tmp_path, default_pull_policy="never")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as ch:
            await login(ch, "docker.io", "hub", PASSWORD)
            await codespecs(ch, "busybox", "busybox")
            gpu = await agent(ch, "n-gpu", "gpu")
            await agent(ch, "n-cpu", "cpu")
            run = await create_run(ch)
            assert run.pull_policy == rpb.PULL_POLICY_NEVER  # stored concrete: what it ran with
            start_msg = (await gpu.next("start_container")).start_container
            assert start_msg.pull_policy == rpb.PULL_POLICY_NEVER
            assert list(start_msg.registry_credentials) == []  # never pulls: no credentials
            missing = await create_run(ch, rpb.PULL_POLICY_MISSING)
            assert missing.pull_policy == rpb.PULL_POLICY_MISSING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create_run(ch, 9)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "pull_policy" in (err.value.details() or "")
    finally:
        await cp.stop(grace=0.2)


async def test_a_failed_pull_fails_the_run_at_once(ch) -> None:
    await codespecs(ch, PRIVATE, "busybox")
    gpu, cpu = await agent(ch, "n-gpu", "gpu"), await agent(ch, "n-cpu", "cpu")
    run = await create_run(ch)
    assert run.pull_policy == rpb.PULL_POLICY_MISSING  # the control plane's default default
    worker = (await gpu.next("start_container")).start_container
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_PULLING))
    message = (
        f"pulling {PRIVATE} from registry.example:5000 on node n-gpu failed: "
        "unauthorized: authentication required"
    )
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_FAILED, message=message))
    failed = await until_run(ch, run.id, lambda r: r.status == rpb.RUN_STATUS_FAILED, "failure")
    assert failed.status_reason == f"worker 0 failed to start on n-gpu: {message}"
    assert (await gpu.next("teardown_run")).teardown_run.run_id == run.id
    assert not any(m.WhichOneof("message") == "start_container" for m in cpu.received)


async def test_unknown_states_and_roles_are_refused_not_guessed(ch) -> None:
    await codespecs(ch, "busybox", "busybox")
    gpu, cpu = await agent(ch, "n-gpu", "gpu"), await agent(ch, "n-cpu", "cpu")
    run = await create_run(ch)
    worker = (await gpu.next("start_container")).start_container
    gpu.send(container_status=status(worker, 99))  # once read as pending
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_UNSPECIFIED))
    # A role it does not know, from the node that holds the job: once read as
    # "job exited with code 1", which failed the run.
    cpu.send(
        container_status=apb.ContainerStatus(
            run_id=run.id, role=7, replica=0, state=rpb.CONTAINER_STATE_EXITED, exit_code=1
        )
    )
    gpu.send(container_status=status(worker, rpb.CONTAINER_STATE_PULLING))  # a known one, after
    now = await until_run(
        ch, run.id, lambda r: r.replicas[0].state == rpb.CONTAINER_STATE_PULLING, "pulling"
    )
    assert now.status == rpb.RUN_STATUS_PENDING
    assert [r.state for r in now.replicas] == [
        rpb.CONTAINER_STATE_PULLING,
        rpb.CONTAINER_STATE_PENDING,
    ]


async def test_image_pull_across_two_nodes_one_of_which_never_answers(ch) -> None:
    await login(ch, "registry.example:5000", "bob", PASSWORD)
    fast, silent = await agent(ch, "a-fast", "gpu"), await agent(ch, "b-silent", "gpu")
    other = await agent(ch, "c-other", "cpu")
    stub = igrpc.ImageServiceStub(ch)
    call = stub.PullImage(ipb.PullImageRequest(image=PRIVATE, pool="gpu"), timeout=3)
    order = (await fast.next("pull_image")).pull_image
    assert (order.image, order.policy) == (PRIVATE, rpb.PULL_POLICY_MISSING)
    assert [(c.registry, c.password) for c in order.registry_credentials] == [
        ("registry.example:5000", PASSWORD)
    ]
    assert (await silent.next("pull_image")).pull_image.request_id != order.request_id
    fast.send(
        image_pulled=apb.ImagePulled(
            request_id=order.request_id, image=PRIVATE, digest=DIGEST, pulled=True
        )
    )
    began = time.monotonic()
    reply = await call
    assert time.monotonic() - began < 3
    assert [(r.node, r.digest, r.pulled, r.error) for r in reply.results] == [
        ("a-fast", DIGEST, True, ""),
        ("b-silent", "", False, reply.results[1].error),
    ]
    assert reply.results[1].error.startswith("node b-silent did not answer within")
    assert not any(m.WhichOneof("message") == "pull_image" for m in other.received)

    # --always goes out as ALWAYS; a late answer to a finished request changes nothing.
    call = stub.PullImage(
        ipb.PullImageRequest(image="busybox", pool="cpu", policy=rpb.PULL_POLICY_ALWAYS), timeout=5
    )
    order = (await other.next("pull_image")).pull_image
    assert order.policy == rpb.PULL_POLICY_ALWAYS and list(order.registry_credentials) == []
    other.send(image_pulled=apb.ImagePulled(request_id=order.request_id, error="no space left"))
    assert [(r.node, r.error) for r in (await call).results] == [("c-other", "no space left")]


async def test_pull_requests_are_checked(ch) -> None:
    stub = igrpc.ImageServiceStub(ch)
    cases = [
        (ipb.PullImageRequest(image=""), grpc.StatusCode.INVALID_ARGUMENT),
        (ipb.PullImageRequest(image="a b"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            ipb.PullImageRequest(image="busybox", policy=rpb.PULL_POLICY_NEVER),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (ipb.PullImageRequest(image="busybox", policy=12), grpc.StatusCode.INVALID_ARGUMENT),
        (ipb.PullImageRequest(image="busybox"), grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PullImage(request, timeout=5)
        assert err.value.code() == code, (request, err.value.details())
    await agent(ch, "n1", "cpu")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PullImage(ipb.PullImageRequest(image="busybox", pool="gpu"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no Ready node in pool gpu" in (err.value.details() or "")


async def test_a_node_that_disconnects_is_reported_at_once(ch) -> None:
    gone = await agent(ch, "n1", "cpu")
    call = igrpc.ImageServiceStub(ch).PullImage(ipb.PullImageRequest(image="busybox"), timeout=20)
    await gone.next("pull_image")
    began = time.monotonic()
    gone.call.cancel()
    reply = await call
    assert time.monotonic() - began < 5
    assert reply.results[0].error == "node n1 disconnected before answering"


async def test_list_images_across_nodes_and_answers_from_the_wrong_node(ch) -> None:
    a, b = await agent(ch, "a", "cpu"), await agent(ch, "b", "gpu")
    stub = igrpc.ImageServiceStub(ch)
    call = stub.ListImages(ipb.ListImagesRequest(), timeout=10)
    ask_a = (await a.next("list_images")).list_images
    ask_b = (await b.next("list_images")).list_images
    image = apb.NodeImage(tags=["localhost/x:1"], digest=DIGEST, size_bytes=1234)
    b.send(images_listed=apb.ImagesListed(request_id=ask_a.request_id, images=[image]))  # not b's
    b.send(image_pulled=apb.ImagePulled(request_id=ask_b.request_id))  # the wrong kind of answer
    a.send(images_listed=apb.ImagesListed(request_id=ask_a.request_id, images=[image]))
    b.send(images_listed=apb.ImagesListed(request_id=ask_b.request_id))
    reply = await call
    assert [(n.node, [i.digest for i in n.images], n.error) for n in reply.nodes] == [
        ("a", [DIGEST], ""),
        ("b", [], ""),
    ]
    assert reply.nodes[0].images[0].tags == ["localhost/x:1"]

    only_b = stub.ListImages(ipb.ListImagesRequest(node="b"), timeout=10)
    ask = (await b.next("list_images")).list_images
    b.send(images_listed=apb.ImagesListed(request_id=ask.request_id, images=[image]))
    assert [n.node for n in (await only_b).nodes] == ["b"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListImages(ipb.ListImagesRequest(node="nobody"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    silent = await stub.ListImages(ipb.ListImagesRequest(node="a"), timeout=2)
    assert silent.nodes[0].error.startswith("node a did not answer within")


async def test_registry_logins_are_checked_and_never_shown_back(ch) -> None:
    stub = igrpc.RegistryServiceStub(ch)
    for request in (
        ipb.LoginRequest(registry="quay.io/team", username="u", password="p"),
        ipb.LoginRequest(registry="quay.io", username="", password="p"),
        ipb.LoginRequest(registry="quay.io", username="u", password=""),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Login(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.Login(ipb.LoginRequest(registry="quay.io", username="u", password=PASSWORD))
    await stub.Login(ipb.LoginRequest(registry="quay.io", username="v", password=PASSWORD))
    listed = await stub.ListRegistries(ipb.ListRegistriesRequest())
    assert [(r.registry, r.username) for r in listed.registries] == [("quay.io", "v")]
    assert (await stub.Logout(ipb.LogoutRequest(registry="https://quay.io/"))).registry == (
        "quay.io"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Logout(ipb.LogoutRequest(registry="quay.io"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListRegistries(ipb.ListRegistriesRequest())).registries) == []
