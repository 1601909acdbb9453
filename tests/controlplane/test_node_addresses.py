"""Workers on host-port nodes reach each other at their nodes' advertised
addresses: a node that registers again with another address is reached at
the new one by the next run's containers (what is derived from the nodes is
derived again when a node changes)."""

from __future__ import annotations

from dataclasses import replace

from controlplane.core.capacity import Capacity
from controlplane.core.nodes import Node
from tests.controlplane.test_orchestrator import SETTINGS, FakeLink, build_world, request, tick


def host_port(name: str, pool: str, address: str) -> Node:
    return Node(
        name,
        (pool,),
        Capacity(4000, 2**33, 0),
        advertise_address=address,
        network_mode="host-port",
    )


async def test_a_node_registering_with_a_new_address_is_reached_there() -> None:
    nodes = [host_port("a", "cpu", "10.0.0.1"), host_port("b", "gpu", "10.0.0.2")]
    orch, _, _, links, _ = await build_world(SETTINGS, nodes)
    first = await orch.create_run(request(workers=2))
    await tick(orch)
    spec = links["b"].started[0]
    assert spec.hosts[f"run-{first.id}-worker-1"] == "10.0.0.2"

    moved = FakeLink()
    await orch.connect(replace(nodes[1], advertise_address="10.0.0.9"), moved, [])
    second = await orch.create_run(request(workers=2))
    await tick(orch)
    spec = next(s for s in moved.started if s.run_id == second.id)
    assert spec.hosts[f"run-{second.id}-worker-1"] == "10.0.0.9"
