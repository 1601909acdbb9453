"""PodmanRuntime against the real Podman API (marker ``podman``)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import urllib.request
from dataclasses import replace

import pytest
from podman.domain.containers import Container
from podman.domain.containers_manager import ContainersManager
from podman.errors import NotFound

from agent.runtime import ImageNotFound
from tests.agent.podman_support import (
    BUSYBOX,
    PYTHON,
    PodmanNode,
    random_run_id,
    spec,
    wait_for_state,
    wait_probe,
)

pytestmark = pytest.mark.podman

SERVE = ["-m", "http.server", "8000"]
SLOW_SERVE = (
    "import time, http.server as h\n"
    "time.sleep(1.5)\n"
    "h.test(h.SimpleHTTPRequestHandler, port=8000)\n"
)
CONNECT = (
    "import os, socket, sys\n"
    "socket.create_connection((os.environ['WORKER'], 8000), timeout=10).close()\n"
    "sys.exit(0 if os.environ['TYGER_RUN_ID'] == os.environ['EXPECT'] else 9)\n"
)


async def test_bridge_worker_is_labelled_probed_and_reachable_by_its_hostname(
    podman_node: PodmanNode,
) -> None:
    rt = podman_node.runtime()
    await rt.ensure_network()
    run_id = random_run_id()
    worker = spec(
        run_id,
        "worker",
        0,
        PYTHON,
        ["python3"],
        SERVE,
        env={"TYGER_RUN_ID": str(run_id), "TYGER_WORKER_INDEX": "0"},
        working_dir="/tmp",
        cpu_limit_millis=500,
        memory_limit_bytes=256 * 2**20,
        endpoints={"http": 8000},
    )
    info = await rt.start(worker)
    assert (info.name, info.run_id, info.role, info.replica) == (worker.name, run_id, "worker", 0)
    assert info.state == "running" and info.ip

    attrs = await podman_node.inspect(worker.name)
    labels = attrs["Config"]["Labels"]
    assert labels["muster.run-id"] == str(run_id)
    assert labels["muster.role"] == "worker"
    assert labels["muster.replica"] == "0"
    assert labels["muster.node"] == podman_node.node
    assert attrs["Config"]["Hostname"] == worker.hostname
    assert attrs["Config"]["WorkingDir"] == "/tmp"
    assert "TYGER_WORKER_INDEX=0" in attrs["Config"]["Env"]
    assert attrs["HostConfig"]["Init"] is True
    assert attrs["HostConfig"]["CpuQuota"] == 50_000 and attrs["HostConfig"]["CpuPeriod"] == 100_000
    assert attrs["HostConfig"]["Memory"] == 256 * 2**20
    network = attrs["NetworkSettings"]["Networks"][podman_node.network]
    assert worker.hostname in network["Aliases"]

    targets = rt.endpoint_targets(info)
    assert [(t.name, t.probe_host, t.probe_port, t.address) for t in targets] == [
        ("http", info.ip, 8000, f"{worker.hostname}:8000")
    ]
    await wait_probe(rt, info)

    job = spec(
        run_id,
        "job",
        0,
        PYTHON,
        ["python3", "-c"],
        [CONNECT],
        env={"WORKER": worker.hostname, "TYGER_RUN_ID": str(run_id), "EXPECT": str(run_id)},
    )
    await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    assert done.exit_code == 0, "the job reached the worker by its DNS alias"


async def test_probe_is_false_until_the_endpoint_listens(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    run_id = random_run_id()
    worker = spec(
        run_id,
        "worker",
        0,
        PYTHON,
        ["python3", "-c"],
        [SLOW_SERVE],
        endpoints={"http": 8000},
    )
    info = await rt.start(worker)
    target = rt.endpoint_targets(info)[0]
    assert not await rt.probe(target), "nothing listens during the first 1.5 s"
    await wait_probe(rt, info)


async def test_exit_code_and_start_idempotence(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    run_id = random_run_id()
    job = spec(run_id, "job", 0, BUSYBOX, ["sh", "-c"], ["exit 3"])
    first = await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    assert done.exit_code == 3
    again = await rt.start(job)  # exists: left as it is, not re-created or re-run
    assert (again.state, again.exit_code) == ("exited", 3)
    assert [i.name for i in await rt.list_managed()] == [first.name]


async def test_killed_container_reports_137(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    run_id = random_run_id()
    job = spec(run_id, "worker", 1, BUSYBOX, ["sleep"], ["300"])
    await rt.start(job)
    await asyncio.to_thread(podman_node.client.containers.get(job.name).kill)
    done = await wait_for_state(rt, job.name, "exited")
    assert done.exit_code == 137


async def test_missing_image_is_a_clear_error_and_never_pulled(podman_node: PodmanNode) -> None:
    """``start`` never pulls (the agent pulls first, as the pull policy says)."""
    rt = podman_node.runtime()
    image = f"localhost/muster-missing-{secrets.token_hex(4)}:latest"
    job = spec(random_run_id(), "job", 0, image, [], [])
    with pytest.raises(ImageNotFound) as exc:
        await rt.start(job)
    assert str(exc.value) == (
        f"image '{image}' not found on node '{podman_node.node}'; it was not pulled, "
        "or was removed since"
    )
    assert await rt.image_digest(image) is None
    assert not await rt.image_exists(image)
    assert not await podman_node.exists(job.name)


async def test_host_port_mode_publishes_endpoints_on_allocated_ports(
    podman_node: PodmanNode,
) -> None:
    lo = 32000 + secrets.randbelow(600)
    rt = podman_node.runtime(
        network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 40)
    )
    run_id = random_run_id()
    # Occupy the first port of the range: the allocator must skip it.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", lo))
        squatter.listen()
        w0 = spec(run_id, "worker", 0, PYTHON, ["python3"], SERVE, endpoints={"http": 8000})
        w1 = spec(run_id, "worker", 1, PYTHON, ["python3"], SERVE, endpoints={"http": 8000})
        info0 = await rt.start(w0)
        info1 = await rt.start(w1)
    ports = {info0.host_ports["http"], info1.host_ports["http"]}
    assert len(ports) == 2 and all(lo < p <= lo + 40 for p in ports)
    assert rt.publish_address == "127.0.0.1"
    attrs = await podman_node.inspect(w0.name)
    assert attrs["HostConfig"]["PortBindings"]["8000/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(info0.host_ports["http"])}
    ]
    assert podman_node.network in attrs["NetworkSettings"]["Networks"]

    for info in (info0, info1):
        (target,) = rt.endpoint_targets(info)
        assert target.address == f"127.0.0.1:{info.host_ports['http']}"
        assert (target.probe_host, target.probe_port) == ("127.0.0.1", info.host_ports["http"])
        await wait_probe(rt, info)
        url = f"http://{target.address}/"
        status = await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u, timeout=5).status)
        assert status == 200

    listed = {i.name: i.host_ports for i in await rt.list_managed()}
    assert listed == {w0.name: info0.host_ports, w1.name: info1.host_ports}
    await rt.remove_run(run_id)
    assert not ports & rt.allocated_host_ports, "removal returns the ports"


async def test_remove_run_removes_only_that_run_promptly_and_is_idempotent(
    podman_node: PodmanNode,
) -> None:
    rt = podman_node.runtime()
    run_a, run_b = random_run_id(), random_run_id()
    specs = [
        spec(run_a, "worker", 0, BUSYBOX, ["sleep"], ["300"]),
        spec(run_a, "worker", 1, BUSYBOX, ["sleep"], ["300"]),
        spec(run_a, "job", 0, BUSYBOX, ["sh", "-c"], ["exit 0"]),
        spec(run_b, "job", 0, BUSYBOX, ["sleep"], ["300"]),
    ]
    for s in specs:
        await rt.start(s)
    loop = asyncio.get_running_loop()
    began = loop.time()
    removed = await rt.remove_run(run_a)
    took = loop.time() - began
    assert sorted(i.name for i in removed) == sorted(s.name for s in specs[:3])
    assert took < 5, f"init=True makes stop prompt; took {took:.1f}s"
    assert [i.name for i in await rt.list_managed()] == [specs[3].name]
    for s in specs[:3]:
        assert not await podman_node.exists(s.name)
    assert await rt.remove_run(run_a) == []


async def test_other_nodes_containers_are_invisible(podman_node: PodmanNode) -> None:
    """Several agents may share one Podman host: each sees only its own node's containers."""
    mine = podman_node.runtime()
    other = podman_node.runtime(node_name=f"{podman_node.node}-other")  # same network
    run_id = random_run_id()
    await mine.start(spec(run_id, "job", 0, BUSYBOX, ["sleep"], ["300"]))
    await other.start(spec(run_id, "job", 1, BUSYBOX, ["sleep"], ["300"]))
    assert [i.replica for i in await mine.list_managed()] == [0]
    assert [i.replica for i in await other.list_managed()] == [1]
    assert await other.inspect(f"muster-run-{run_id}-job-0") is None
    assert [i.replica for i in await mine.remove_run(run_id)] == [0]
    assert [i.replica for i in await other.list_managed()] == [1]


async def test_two_clusters_share_a_node_name_without_touching_each_other(
    podman_node: PodmanNode,
) -> None:
    """Two muster clusters on one Podman host, agents with the same node name,
    runs with the same id: names differ by the cluster's short id, and each
    runtime lists (so stops and removes) only its own cluster's containers."""
    ours, theirs = podman_node.runtime(), podman_node.runtime()
    ours.cluster.cluster_id, theirs.cluster.cluster_id = "1" * 32, "2" * 32
    run_id = random_run_id()
    for rt, prefix in ((ours, "muster-111111"), (theirs, "muster-222222")):
        s = spec(run_id, "job", 0, BUSYBOX, ["sleep"], ["300"])
        await rt.start(
            replace(s, name=f"{prefix}-run-{run_id}-job-0", cluster_id=rt.cluster.cluster_id)
        )
    assert [i.name for i in await ours.list_managed()] == [f"muster-111111-run-{run_id}-job-0"]
    assert [i.cluster_id for i in await theirs.list_managed()] == ["2" * 32]
    await ours.stop_run(run_id)
    assert [i.name for i in await ours.remove_run(run_id)] == [f"muster-111111-run-{run_id}-job-0"]
    [left] = await theirs.list_managed()
    assert (left.name, left.state) == (f"muster-222222-run-{run_id}-job-0", "running")


async def test_network_removed_under_the_agent_is_recreated(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    run_id = random_run_id()
    await rt.start(spec(run_id, "job", 0, BUSYBOX, ["sh", "-c"], ["exit 0"]))
    await rt.remove_run(run_id)
    await asyncio.to_thread(podman_node.client.networks.get(podman_node.network).remove)
    info = await rt.start(spec(run_id, "job", 1, BUSYBOX, ["sleep"], ["300"]))
    assert info.state == "running" and info.ip


async def test_containers_use_the_k8s_file_log_driver(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    job = spec(random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], ["echo hi"])
    await rt.start(job)
    attrs = await podman_node.inspect(job.name)
    assert attrs["HostConfig"]["LogConfig"]["Type"] == "k8s-file"


async def test_host_ports_published_by_any_container_on_the_host_are_not_allocated(
    podman_node: PodmanNode,
) -> None:
    lo = 32000 + secrets.randbelow(600)
    foreign = f"muster-test-foreign-{secrets.token_hex(4)}"

    def create_foreign() -> None:
        # Another node's (or nobody's) container, created but not running:
        # nothing listens on its port yet, but it will need it when it starts.
        podman_node.client.containers.create(
            BUSYBOX, ["sleep", "300"], name=foreign, ports={"8000/tcp": ("127.0.0.1", lo)}
        )

    def remove_foreign() -> None:
        podman_node.client.containers.get(foreign).remove(force=True)

    await asyncio.to_thread(create_foreign)
    try:
        rt = podman_node.runtime(
            network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 1)
        )
        w0 = spec(
            random_run_id(), "worker", 0, PYTHON, ["python3"], SERVE, endpoints={"http": 8000}
        )
        info = await rt.start(w0)
        assert info.host_ports == {"http": lo + 1}
    finally:
        await asyncio.to_thread(remove_foreign)


async def test_a_start_that_loses_the_create_race_returns_its_ports(
    podman_node: PodmanNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = 32000 + secrets.randbelow(600)
    rt = podman_node.runtime(
        network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 40)
    )
    w0 = spec(random_run_id(), "worker", 0, PYTHON, ["python3"], SERVE, endpoints={"http": 8000})
    first = await rt.start(w0)
    # A second start that does not see the container yet (Podman answers its
    # first look-up with "no such container"): its create gets 409.
    real_get = ContainersManager.get
    misses: list[str] = []

    def get_late(manager: ContainersManager, key: str) -> object:
        if key == w0.name and not misses:
            misses.append(key)
            raise NotFound(f"no container with name or ID {key!r} found")
        return real_get(manager, key)

    monkeypatch.setattr(ContainersManager, "get", get_late)
    again = await rt.start(w0)
    assert misses == [w0.name], "the race was not simulated"
    assert again.host_ports == first.host_ports
    assert rt.allocated_host_ports == set(first.host_ports.values()), "no port leaked"


async def test_a_failure_after_the_container_started_removes_it_and_then_frees_its_ports(
    podman_node: PodmanNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = 32000 + secrets.randbelow(600)
    rt = podman_node.runtime(
        network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 40)
    )
    w0 = spec(random_run_id(), "worker", 0, PYTHON, ["python3"], SERVE, endpoints={"http": 8000})

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("inspect went wrong")

    # Podman started the container, then its inspect fails.
    monkeypatch.setattr(Container, "reload", broken)
    with pytest.raises(RuntimeError, match="inspect went wrong"):
        await rt.start(w0)
    assert not await podman_node.exists(w0.name), "nothing is left behind"
    assert rt.allocated_host_ports == frozenset()
