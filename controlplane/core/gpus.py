"""GPU devices: which of a node's CDI devices each replica gets. Pure.

A node whose agent found CDI devices reports their names (`nvidia.com/gpu=0`,
...); its GPU count is their number. When a run is placed, every replica that
asks for N GPUs on such a node gets N device names of its own: none held by a
replica of an active run (of any run), none given to another replica of the
same placement. The names are stored with the replica before its container is
started and are free again once the run has ended. A node that offers GPUs as
a count only (no device names) keeps the count-based behaviour: its replicas
get no device.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from controlplane.core.runs import Run

ReplicaKey = tuple[str, int]
"""(role, index) of a replica."""


class GpuShortage(Exception):
    """A placement asks for more devices than are free on one of its nodes."""


def devices_in_use(runs: Iterable[Run]) -> dict[str, set[str]]:
    """Devices held by replicas of active runs, per node."""
    used: dict[str, set[str]] = {}
    for run in runs:
        if run.terminal:
            continue
        for r in run.replicas:
            if r.node and r.gpu_devices:
                used.setdefault(r.node, set()).update(r.gpu_devices)
    return used


def free_devices(devices: Sequence[str], used: Collection[str]) -> list[str]:
    """The node's devices nobody holds, in the node's order."""
    return [d for d in devices if d not in used]


def choose_devices(devices: Sequence[str], used: Collection[str], count: int) -> tuple[str, ...]:
    """`count` free devices of one node (the first free ones in its order)."""
    free = free_devices(devices, used)
    if count > len(free):
        raise GpuShortage(f"{count} GPU device(s) needed, {len(free)} free")
    return tuple(free[:count])


def assign_devices(
    placement: Mapping[ReplicaKey, str],
    needs: Mapping[str, int],
    node_devices: Mapping[str, Sequence[str]],
    in_use: Mapping[str, Collection[str]],
) -> dict[ReplicaKey, tuple[str, ...]]:
    """Devices for every replica of one placement that needs GPUs on a node with devices.

    `placement` maps (role, index) to a node, `needs` maps a role to the GPUs
    each of its replicas asks for, `node_devices` the nodes' device names and
    `in_use` the devices already held there. Replicas get devices in role and
    index order, so the result is deterministic. Raises GpuShortage (naming
    the node) when a node has too few free devices.
    """
    taken: dict[str, set[str]] = {}
    out: dict[ReplicaKey, tuple[str, ...]] = {}
    for key in sorted(placement, key=lambda k: (k[0] != "worker", k[1])):
        need, node = needs.get(key[0], 0), placement[key]
        devices = node_devices.get(node, ())
        if need <= 0 or not devices:
            continue
        held = taken.setdefault(node, set(in_use.get(node, ())))
        try:
            chosen = choose_devices(devices, held, need)
        except GpuShortage as exc:
            raise GpuShortage(f"node {node}: {exc}") from None
        held.update(chosen)
        out[key] = chosen
    return out


def needs_of(run: Run) -> dict[str, int]:
    """GPUs each replica of a role asks for."""
    needs = {"job": run.job.request.gpus}
    if run.worker is not None:
        needs["worker"] = run.worker.request.gpus
    return needs


def allocated_gpus(devices: Sequence[str], used: Collection[str], counted: int) -> int:
    """GPUs the scheduler must treat as taken on a node: the requests counted
    there, or more if fewer of its devices are free than that suggests (its
    agent came back with another device list while runs still hold the old)."""
    return max(counted, len(devices) - len(free_devices(devices, used)))
