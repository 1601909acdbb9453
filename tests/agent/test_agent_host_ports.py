"""Host-port accounting of the Podman runtime, without Podman."""

from __future__ import annotations

import pytest

from agent.podman_ports import HostPorts, published_ports
from agent.ports import PortsExhausted
from agent.runtime import ContainerInfo


def book(lo: int = 40000, hi: int = 40003) -> HostPorts:
    return HostPorts((lo, hi), "127.0.0.1", is_free=lambda _port: True)


def info(name: str, **host_ports: int) -> ContainerInfo:
    return ContainerInfo(
        name=name, run_id=1, role="worker", replica=0, state="running", host_ports=host_ports
    )


def test_a_recorded_container_holds_its_ports_until_forgotten() -> None:
    ports = book()
    got = ports.allocate(["http", "grpc"])
    assert sorted(got.values()) == [40000, 40001]
    ports.record("w0", got.values())
    assert ports.names() == {"w0"} and ports.allocated == {40000, 40001}
    ports.forget("w0")
    assert ports.names() == set() and ports.allocated == frozenset()


def test_an_allocation_that_runs_out_takes_nothing() -> None:
    ports = book(40000, 40001)
    with pytest.raises(PortsExhausted):
        ports.allocate(["a", "b", "c"])
    assert ports.allocated == frozenset()


def test_sync_adopts_listed_containers_and_releases_only_those_known_before() -> None:
    ports = book()
    ports.record("gone", [40003])
    before = ports.names()
    ports.record("new", [40002])  # created while the list was in flight
    assert not ports.synced
    ports.sync([info("adopted", http=40000)], before)
    assert ports.synced
    assert ports.names() == {"new", "adopted"}
    assert ports.allocated == {40000, 40002}


def test_ports_published_elsewhere_are_reserved_and_released_when_gone() -> None:
    ports = book()
    ports.record("mine", [40000])
    ports.published_elsewhere({40000, 40001})
    assert ports.allocated == {40000, 40001}
    ports.published_elsewhere(set())
    assert ports.allocated == {40000}, "our own port stays held"


def test_published_ports_reads_libpod_bindings_with_ranges() -> None:
    containers = [
        {"Ports": [{"host_port": 31000, "range": 3}, {"host_port": 0}]},
        {"Ports": None},
        {"Ports": [{"host_port": "bad"}]},
    ]
    assert published_ports(containers) == {31000, 31001, 31002}
