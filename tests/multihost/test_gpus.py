"""GPUs through CDI over two hosts of the bed, found by the agents themselves (issue 9).

h2 and h3 each get a fake CDI spec (tests/fake_cdi.py) with two devices in their own
/var/run/cdi: /var/run is /run, and every bed host has a private /run, so neither the
machine nor h1 sees it, while the host's Podman 4.3 reads it. Their agents get only
--gpu-cdi-kind (no --gpus) and offer what they find. Both hosts name their devices KIND=0
and KIND=1, as real machines do (nvidia.com/gpu=0 on each), and each spec's devices also
set FAKEGPU_HOST=<host>, so a container shows whose spec its device came from."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.fake_cdi import fake_spec
from tests.multihost.conftest import Bed, Host
from tests.multihost.test_cluster import MultiCluster, three_hosts

BUSYBOX = "localhost/muster-busybox:latest"
SPEC_DIR = "/var/run/cdi"  # inside a host: its private /run/cdi
WORKER = (
    'for d in /dev/fakegpu*; do [ -c "$d" ] && echo "chardev $d"; done; '
    "env | grep ^FAKEGPU_; exec sleep 300"
)


@contextlib.contextmanager
def host_gpus(hosts: Sequence[Host], count: int, tmp: Path) -> Iterator[tuple[str, str]]:
    """A fake spec of `count` devices of a new kind in each host's own /var/run/cdi;
    yields (kind, path of the spec inside the hosts). Removed afterwards."""
    tag = secrets.token_hex(4)
    kind, path = f"muster.test/gpu-{tag}", f"{SPEC_DIR}/muster-test-{tag}.json"
    try:
        for h in hosts:
            source = tmp / f"cdi-{h.name}.json"
            source.write_text(json.dumps(fake_spec(kind, count, [f"FAKEGPU_HOST={h.name}"])))
            h.exec("mkdir", "-p", SPEC_DIR)
            h.exec("cp", str(source), path)
        yield kind, path
    finally:
        for h in hosts:
            h.exec("rm", "-f", path, check=False)
            h.exec("rmdir", SPEC_DIR, check=False)  # unless something else is in it


@pytest.fixture
def gpu_cluster(bed: Bed, tmp_path: Path) -> Iterator[tuple[MultiCluster, str]]:
    h1, h2, h3 = bed.hosts[:3]
    with host_gpus([h2, h3], 2, tmp_path) as (kind, path):
        assert not Path(path).exists(), "the machine's own /run must not see a host's spec"
        assert h1.exec("test", "-e", path, check=False).returncode != 0
        with three_hosts(bed, tmp_path, ["--gpu-cdi-kind", kind]) as cluster:
            yield cluster, kind


def workers(run: dict) -> list[dict]:
    return sorted(
        (r for r in run["replicas"] if r["role"] == "worker"), key=lambda r: r.get("index", 0)
    )


def seen_by_workers(cluster: MultiCluster, run_id: int, count: int) -> dict[int, set[str]]:
    """What each worker printed: its character devices /dev/fakegpu* and FAKEGPU_ vars."""

    def lines() -> dict[int, set[str]] | None:
        seen: dict[int, set[str]] = {}
        for line in cluster.logs(run_id).splitlines():
            if match := re.match(r"^\[worker-(\d+)\] (.*)$", line):
                seen.setdefault(int(match[1]), set()).add(match[2])
        return seen if len(seen) == count and all(len(v) == 3 for v in seen.values()) else None

    return wait_for(lines, 30, f"the {count} workers of run {run_id} to print their devices")


def held(run: dict) -> list[tuple[str, str]]:
    """(node, device) of each worker; each holds exactly one device."""
    assert all(len(w.get("gpuDevices", [])) == 1 for w in workers(run)), run
    return [(w["nodeName"], w["gpuDevices"][0]) for w in workers(run)]


def offered_devices(cluster: MultiCluster, hosts: list[Host]) -> dict[str, tuple[list, int]]:
    """What each host's node offers: (GPU devices, allocatable GPUs)."""
    nodes = cluster.nodes()
    return {
        h.name: (nodes[cluster.node(h)].get("gpuDevices", []),
                 nodes[cluster.node(h)]["allocatable"].get("gpus", 0))
        for h in hosts
    }  # fmt: skip


def create_codespecs(cluster: MultiCluster) -> Callable[[int], int]:
    """A 1-GPU worker codespec and a job that waits; returns how to make a
    run of N such workers."""
    cluster.cli("codespec", "create", "mh-gpu", "-k", "worker", "--image", BUSYBOX, "--gpu", "1",
                "--cpu-request", "250m", "--command", "--", "sh", "-c", WORKER)  # fmt: skip
    cluster.cli("codespec", "create", "mh-waiter", "--image", BUSYBOX,
                "--command", "--", "sleep", "300")  # fmt: skip

    def gpu_run(replicas: int) -> int:
        return cluster.create_run(
            "-c", "mh-waiter", "--node-pool", "job", "--worker-codespec", "mh-gpu",
            "--worker-replicas", str(replicas), "--worker-node-pool", "work",
        )  # fmt: skip

    return gpu_run


def check_each_worker_sees_its_own_device(
    cluster: MultiCluster, run_id: int, placed: list[tuple[str, str]], host_of: dict[str, Host]
) -> None:
    """Inside each container: exactly its own device node, from its own host's spec."""
    for index, lines in seen_by_workers(cluster, run_id, 3).items():
        node, device = placed[index]
        number = device.rsplit("=", 1)[1]
        assert lines == {
            f"chardev /dev/fakegpu{number}",
            f"FAKEGPU_{number}={device}",
            f"FAKEGPU_HOST={host_of[node].name}",
        }, (index, lines)


def wait_until_it_waits_for_gpus(cluster: MultiCluster, run_id: int) -> None:
    """The run waits for GPUs, saying exactly why."""

    def waits_for_gpus() -> dict | None:
        shown = cluster.run(run_id)
        return shown if "not enough free GPUs" in shown.get("statusReason", "") else None

    pending = wait_for(waits_for_gpus, 30, "the 2-GPU run to wait for GPUs", 0.3)
    assert pending["status"] == "Pending"
    assert pending["statusReason"] == (
        "waiting for capacity in pool work: 1 of 2 workers placed "
        "(not enough free GPUs: 1 per worker, at most 0 free on one node)"
    )


def test_gpus_found_on_two_hosts_go_one_per_worker_and_a_run_waits_for_more(
    gpu_cluster: tuple[MultiCluster, str],
) -> None:
    cluster, kind = gpu_cluster
    h1, h2, h3 = cluster.bed.hosts[:3]
    host_of = {cluster.node(h): h for h in (h1, h2, h3)}
    names = [f"{kind}=0", f"{kind}=1"]
    offered = offered_devices(cluster, [h1, h2, h3])
    assert offered == {"h1": ([], 0), "h2": (names, 2), "h3": (names, 2)}, offered
    gpu_run = create_codespecs(cluster)

    # Three workers x 1 GPU: three distinct devices, so over both hosts.
    first = gpu_run(3)
    first_held = held(cluster.wait_run(first, 60, statuses={"Running"}))
    assert len(set(first_held)) == 3, first_held
    assert {node for node, _ in first_held} == {cluster.node(h2), cluster.node(h3)}
    assert all(device in names for _, device in first_held), first_held
    check_each_worker_sees_its_own_device(cluster, first, first_held, host_of)

    # One device is free: a run of 2 workers x 1 GPU waits, saying why.
    second = gpu_run(2)
    wait_until_it_waits_for_gpus(cluster, second)

    # A 1-GPU run behind it takes the last device (backfill); the 2-GPU run still waits.
    third = gpu_run(1)
    third_held = held(cluster.wait_run(third, 60, statuses={"Running"}))
    every = {(cluster.node(h), d) for h in (h2, h3) for d in names}
    assert set(first_held) | set(third_held) == every, (first_held, third_held)
    in_use = {n: v.get("gpuDevicesInUse", []) for n, v in cluster.nodes().items()}
    assert in_use == {cluster.node(h1): [], cluster.node(h2): names, cluster.node(h3): names}
    assert cluster.run(second)["status"] == "Pending"

    # The first run ends: the waiting run gets two devices of their own.
    cluster.cli("run", "cancel", str(first))
    second_held = held(cluster.wait_run(second, 60, statuses={"Running"}))
    assert len(set(second_held + third_held)) == 3, (second_held, third_held)
    for run_id in (second, third):
        cluster.cli("run", "cancel", str(run_id))
    cluster.wait_empty(h1, h2, h3)
    assert not any(n.get("gpuDevicesInUse") for n in cluster.nodes().values())
