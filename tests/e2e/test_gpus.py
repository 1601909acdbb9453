"""GPUs through CDI, end to end: a real control plane, two real agents on the
host's Podman, and a fake CDI vendor (tests/fake_cdi.py) whose devices are
/dev/null behind /dev/fakegpuI. The two agents offer disjoint halves of its
four devices (--gpus lists); a run of 3 workers x 1 GPU gets 3 distinct
devices, each worker sees exactly its own, a second run needing 2 more GPUs
waits Pending (also across a control plane restart), and it gets devices of
its own once the first run ends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from tests.fake_cdi import fake_gpus

pytestmark = pytest.mark.podman

WORKER = """\
kind: worker
image: localhost/muster-busybox:latest
resources:
  gpu: "1"
command: ["sh", "-c"]
args:
  - for d in /dev/fakegpu*; do echo "device $d"; done; env | grep ^FAKEGPU_; exec sleep 300
"""


def table_rows(table: str) -> list[dict[str, str]]:
    """`node list`'s table as dicts: each cell is cut at its header's column."""
    header, *lines = table.splitlines()
    names = re.split(r"  +", header.strip())
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


def workers_of(run: dict) -> list[dict]:
    return sorted(
        (r for r in run["replicas"] if r["role"] == "worker"), key=lambda r: r.get("index", 0)
    )


def seen_by_workers(cluster, run_id: int, count: int) -> dict[int, list[str]]:
    """What each worker printed: its device nodes and FAKEGPU_ variables."""

    def lines() -> dict[int, list[str]] | None:
        out = cluster.cli("run", "logs", str(run_id), check=True).stdout.splitlines()
        seen: dict[int, list[str]] = {}
        for line in out:
            match = re.match(r"^\[worker-(\d+)\] (.*)$", line)
            if match:
                seen.setdefault(int(match[1]), []).append(match[2])
        complete = len(seen) == count and all(len(v) == 2 for v in seen.values())
        return seen if complete else None

    return wait_for(lines, 20, f"the {count} workers of run {run_id} to print their devices")


def start_gpu_agents(cluster, gpus) -> dict[str, list[str]]:
    """Two agents in pool gpu, each offering half of the fake devices; their nodes
    show exactly their own. Returns the devices by agent short name."""
    halves = {"g1": gpus.names[:2], "g2": gpus.names[2:]}
    for short, names in halves.items():
        cluster.start_agent(short, ["gpu"], "--gpu-cdi-kind", gpus.kind, "--gpus", ",".join(names))
    nodes = cluster.wait_nodes(2)
    assert {n["name"]: n["gpuDevices"] for n in nodes} == {
        cluster.node(s): names for s, names in halves.items()
    }
    assert all(n["allocatable"]["gpus"] == 2 for n in nodes)
    return halves


def devices_held(cluster, run: dict, halves: dict[str, list[str]]) -> dict[int, list[str]]:
    """Three workers, three distinct devices, each stored with its replica (a
    device of the replica's own node); the job holds none. By worker index."""
    held = {w.get("index", 0): w["gpuDevices"] for w in workers_of(run)}
    assert sorted(held) == [0, 1, 2] and all(len(d) == 1 for d in held.values())
    assert len({d[0] for d in held.values()}) == 3
    for w in workers_of(run):
        owner = next(s for s, names in halves.items() if w["gpuDevices"][0] in names)
        assert w["nodeName"] == cluster.node(owner)  # a device of the replica's own node
    job = next(r for r in run["replicas"] if r["role"] == "job")
    assert "gpuDevices" not in job
    return held


def assert_waits_for_gpus(cluster, run_id: int) -> None:
    """The run waits, Pending, saying exactly why."""

    def waits_for_gpus() -> dict | None:
        shown = cluster.run_json(run_id)
        return shown if "not enough free GPUs" in shown.get("statusReason", "") else None

    pending = wait_for(waits_for_gpus, 20, "the second run to wait for GPUs")
    assert pending["status"] == "Pending"
    assert pending["statusReason"] == (
        "waiting for capacity in pool gpu: 1 of 2 workers placed "
        "(not enough free GPUs: 1 per worker, at most 0 free on one node)"
    )


def assert_devices_in_use(cluster, held: dict[int, list[str]]) -> None:
    """The nodes show the `held` devices in use (both nodes some), as the API and
    as node list's table does, per node, with its allocation."""
    in_use = {n["name"]: n.get("gpuDevicesInUse", []) for n in cluster.nodes()}
    assert sorted(d for v in in_use.values() for d in v) == sorted(d[0] for d in held.values())
    for n in cluster.nodes():
        assert n["allocated"].get("gpus", 0) == len(in_use[n["name"]])
    # node list shows, per node, its allocation and exactly the devices in use.
    rows = table_rows(cluster.cli("node", "list", check=True).stdout)
    assert {r["NAME"]: (r["GPU"], r["GPUS IN USE"]) for r in rows} == {
        name: (f"{len(devices)}/2", ",".join(devices) or "-") for name, devices in in_use.items()
    }, rows
    assert sorted(len(d) for d in in_use.values()) == [1, 2], in_use  # both nodes used


def test_workers_get_distinct_cdi_devices_and_a_run_waits_for_gpus(
    make_cluster, tmp_path: Path
) -> None:
    with fake_gpus(4) as gpus:
        cluster = make_cluster({}, wait=False)
        halves = start_gpu_agents(cluster, gpus)

        worker = tmp_path / "gpu-worker.yaml"
        worker.write_text(WORKER)
        cluster.codespec("gpu-worker", worker)  # resources.gpu written as Tyger writes it: "1"
        cluster.shell_codespec("waiter", "exec sleep 300")
        args = ["-c", "waiter", "--node-pool", "gpu", "--worker-codespec", "gpu-worker"]
        first = cluster.create_run(*args, "--worker-node-pool", "gpu", "--worker-replicas", "3")
        run = cluster.wait_run(first, 30, statuses={"Running"})

        held = devices_held(cluster, run, halves)

        # Inside each container: exactly its device node, and its variable.
        for index, lines in seen_by_workers(cluster, first, 3).items():
            (name,) = held[index]
            number = name.rsplit("=", 1)[1]
            assert lines == [f"device /dev/fakegpu{number}", f"FAKEGPU_{number}={name}"], lines

        # One GPU is free; a run of 2 workers x 1 GPU waits, saying why.
        second = cluster.create_run(*args, "--worker-node-pool", "gpu", "--worker-replicas", "2")
        assert_waits_for_gpus(cluster, second)
        assert_devices_in_use(cluster, held)

        # A control plane restart keeps the assignment: same devices, still waiting.
        cluster.restart_control_plane()
        cluster.wait_nodes(2)
        after = cluster.run_json(first)
        assert {w.get("index", 0): w["gpuDevices"] for w in workers_of(after)} == held
        assert after["status"] == "Running"
        assert cluster.run_json(second)["status"] == "Pending"

        # The first run ends: its devices are free, the second run gets two.
        cluster.cli("run", "cancel", str(first), check=True)
        placed = cluster.wait_run(second, 30, statuses={"Running"})
        devices = [w["gpuDevices"] for w in workers_of(placed)]
        assert all(len(d) == 1 for d in devices) and devices[0] != devices[1]
        for index, lines in seen_by_workers(cluster, second, 2).items():
            (name,) = devices[index]
            assert lines[1] == f"FAKEGPU_{name.rsplit('=', 1)[1]}={name}"
        cluster.cli("run", "cancel", str(second), check=True)
        cluster.wait_no_containers(first)
        cluster.wait_no_containers(second)
        assert all(not n.get("gpuDevicesInUse") for n in cluster.nodes())
