"""The runtime contract (agent/runtime.py), checked on the fake and on real Podman alike.

Every test here runs once over :class:`~agent.runtime_fake.FakeRuntime` and
once over :class:`~agent.runtime_podman.PodmanRuntime` (marker ``podman``;
skipped without the API socket or the test images). They check what the
supervisor relies on: starts idempotent by name, containers made before the
runtime adopted, state changes and exit codes seen by listing, teardown that
removes, listing limited to the node's cluster, host-port accounting, probes,
change announcements and logs. What a container does (exit with a code,
print lines, serve a port) is a command on Podman and a script on the fake:
:class:`Node` hides that difference, and only that.

On Podman every container is made on the test's private node
(:func:`tests.agent.podman_support.new_podman_node`), whose cleanup removes
every container labelled with it, whatever the test did.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from agent.runtime import (
    ContainerInfo,
    ContainerSpec,
    ImageNotFound,
    Runtime,
    container_labels,
)
from agent.runtime_fake import FakeRuntime
from tests.agent.podman_support import (
    BUSYBOX,
    PYTHON,
    PodmanNode,
    new_podman_node,
    random_run_id,
    wait_for_state,
    wait_probe,
)

CLUSTER_A, CLUSTER_B = "a" * 32, "b" * 32
Script = Callable[[FakeRuntime], None]


def _spec(run_id: int, role: str, replica: int, **extra: Any) -> ContainerSpec:
    return ContainerSpec(
        run_id=run_id,
        role=role,  # type: ignore[arg-type]
        replica=replica,
        name=f"muster-run-{run_id}-{role}-{replica}",
        hostname=f"run-{run_id}-{role}-{replica}",
        image=BUSYBOX,
        command=["sleep"],
        args=["300"],
        **extra,
    )


class Node:
    """One node of the runtime under test: its runtimes and what its containers do."""

    kind = ""

    def runtime(self, **settings: Any) -> Runtime:
        """A new runtime for this node (``network_mode``, ``advertise_address``,
        ``port_range`` as both runtimes take them)."""
        raise NotImplementedError

    def sleeper(
        self, run_id: int, role: str = "job", replica: int = 0, **extra: Any
    ) -> ContainerSpec:
        """A container that runs until it is stopped."""
        return _spec(run_id, role, replica, **extra)

    def exiting(self, run_id: int, code: int, replica: int = 0) -> ContainerSpec:
        """A job that exits with ``code`` right after it starts."""
        return replace(_spec(run_id, "job", replica), command=["sh", "-c"], args=[f"exit {code}"])

    def printing(self, run_id: int, lines: list[str]) -> ContainerSpec:
        """A job that prints ``lines`` on stdout, then exits 0."""
        script = "; ".join(f"echo {line}" for line in lines)
        return replace(_spec(run_id, "job", 0), command=["sh", "-c"], args=[script])

    def server(self, run_id: int, replica: int = 0) -> ContainerSpec:
        """A worker whose endpoint ``http`` (port 8000) accepts once it is up."""
        return replace(
            _spec(run_id, "worker", replica, endpoints={"http": 8000}),
            image=PYTHON,
            command=["python3"],
            args=["-m", "http.server", "8000"],
        )

    async def start(self, rt: Runtime, spec: ContainerSpec) -> ContainerInfo:
        """``rt.start(spec)``, then the container does what its spec says."""
        return await rt.start(spec)

    async def made_before(self, spec: ContainerSpec, *, started: bool) -> Runtime:
        """A new runtime on a node where ``spec``'s container was made before it
        (by an earlier agent; ``started``: and it runs, else it was only created)."""
        raise NotImplementedError

    async def kill(self, rt: Runtime, name: str) -> None:
        """SIGKILL the container from outside the runtime."""
        raise NotImplementedError

    async def remove_outside(self, rt: Runtime, name: str) -> None:
        """Remove the container behind the runtime's back."""
        raise NotImplementedError

    def missing_image(self, rt: Runtime) -> str:
        """An image that is not on the node."""
        raise NotImplementedError


class FakeNode(Node):
    """The fake: containers do what a script run after ``start`` makes them do."""

    kind = "fake"

    def __init__(self) -> None:
        self.name = f"fake-{secrets.token_hex(4)}"
        self._scripts: dict[str, Script] = {}

    def runtime(self, **settings: Any) -> FakeRuntime:
        return FakeRuntime(node_name=self.name, **settings)

    def exiting(self, run_id: int, code: int, replica: int = 0) -> ContainerSpec:
        spec = super().exiting(run_id, code, replica)
        self._scripts[spec.name] = lambda rt: rt.exit(spec.name, code)
        return spec

    def printing(self, run_id: int, lines: list[str]) -> ContainerSpec:
        spec = super().printing(run_id, lines)

        def run(rt: FakeRuntime) -> None:
            for line in lines:
                rt.write_log(spec.name, "stdout", line + "\n")
            rt.exit(spec.name, 0)

        self._scripts[spec.name] = run
        return spec

    async def start(self, rt: Runtime, spec: ContainerSpec) -> ContainerInfo:
        info = await rt.start(spec)
        script = self._scripts.pop(spec.name, None)
        if script is not None:
            assert isinstance(rt, FakeRuntime)
            script(rt)
        return info

    async def made_before(self, spec: ContainerSpec, *, started: bool) -> Runtime:
        rt = self.runtime()
        rt.add_existing(spec, state="running" if started else "creating")
        return rt

    async def kill(self, rt: Runtime, name: str) -> None:
        assert isinstance(rt, FakeRuntime)
        rt.kill(name)

    async def remove_outside(self, rt: Runtime, name: str) -> None:
        assert isinstance(rt, FakeRuntime)
        rt.vanish(name)

    def missing_image(self, rt: Runtime) -> str:
        assert isinstance(rt, FakeRuntime)
        image = f"localhost/muster-missing-{secrets.token_hex(4)}:latest"
        rt.remove_image(image)
        return image


class RealNode(Node):
    """Podman: containers run their commands; outside actions go through the API."""

    kind = "podman"

    def __init__(self, podman: PodmanNode) -> None:
        self.podman = podman

    def runtime(self, **settings: Any) -> Runtime:
        return self.podman.runtime(**settings)

    async def made_before(self, spec: ContainerSpec, *, started: bool) -> Runtime:
        if started:
            await self.podman.runtime().start(spec)
            return self.runtime()

        def create() -> None:  # as an agent that stopped between create and start
            self.podman.client.containers.create(
                spec.image,
                [*spec.command, *spec.args],
                name=spec.name,
                hostname=spec.hostname,
                labels=container_labels(spec, self.podman.node),
                init=True,  # so that a stop (and the cleanup's removal) is prompt
            )

        await asyncio.to_thread(create)
        return self.runtime()

    async def kill(self, rt: Runtime, name: str) -> None:
        await asyncio.to_thread(lambda: self.podman.client.containers.get(name).kill())

    async def remove_outside(self, rt: Runtime, name: str) -> None:
        await asyncio.to_thread(lambda: self.podman.client.containers.get(name).remove(force=True))

    def missing_image(self, rt: Runtime) -> str:
        return f"localhost/muster-missing-{secrets.token_hex(4)}:latest"


@pytest.fixture(params=["fake", pytest.param("podman", marks=pytest.mark.podman)])
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    """The node under test; on Podman, everything it made is removed afterwards."""
    if request.param == "fake":
        yield FakeNode()
        return
    podman = new_podman_node()
    try:
        yield RealNode(podman)
    finally:
        await podman.cleanup()


async def names(rt: Runtime) -> list[str]:
    """The names ``rt`` lists, sorted."""
    return sorted(i.name for i in await rt.list_managed())


# -- start ------------------------------------------------------------------------------


async def test_start_makes_a_running_container_with_its_identity(node: Node) -> None:
    rt = node.runtime()
    run_id = random_run_id()
    spec = node.sleeper(
        run_id, "worker", 2, generation=7, cluster_id=CLUSTER_A, endpoints={"http": 8000}
    )
    info = await node.start(rt, spec)
    listed = {i.name: i for i in await rt.list_managed()}
    inspected = await rt.inspect(spec.name)
    for seen in (info, listed[spec.name], inspected):
        assert seen is not None
        assert (seen.name, seen.run_id, seen.role, seen.replica) == (spec.name, run_id, "worker", 2)
        assert (seen.state, seen.generation, seen.cluster_id) == ("running", 7, CLUSTER_A)
        assert seen.hostname == spec.hostname and seen.endpoints == {"http": 8000}
    assert list(listed) == [spec.name]
    digest = await rt.image_digest(spec.image)
    assert digest and inspected is not None and inspected.image_digest == digest, (
        "inspect tells the digest of the container's image"
    )


async def test_start_is_idempotent_by_name(node: Node) -> None:
    rt = node.runtime()
    running = node.sleeper(random_run_id())
    exited = node.exiting(random_run_id(), 3)
    await node.start(rt, running)
    await node.start(rt, exited)
    await wait_for_state(rt, exited.name, "exited")

    again = await rt.start(running)
    assert again.state == "running"
    left = await rt.start(exited)  # exists: left as it is, never re-created or re-run
    assert (left.state, left.exit_code) == ("exited", 3)
    assert await names(rt) == sorted([running.name, exited.name])


async def test_a_missing_image_fails_the_start_and_leaves_nothing(node: Node) -> None:
    rt = node.runtime()
    spec = replace(node.sleeper(random_run_id()), image=node.missing_image(rt))
    with pytest.raises(ImageNotFound):
        await rt.start(spec)
    assert not await rt.image_exists(spec.image)
    assert await rt.image_digest(spec.image) is None
    assert await rt.inspect(spec.name) is None
    assert await names(rt) == []


# -- adoption ---------------------------------------------------------------------------


async def test_a_container_made_before_the_runtime_is_adopted(node: Node) -> None:
    spec = node.sleeper(random_run_id(), "worker", 1, generation=3)
    rt = await node.made_before(spec, started=True)
    [info] = await rt.list_managed()
    expected = (spec.name, "worker", 1, "running", 3)
    assert (info.name, info.role, info.replica, info.state, info.generation) == expected
    again = await rt.start(spec)
    assert again.state == "running"
    assert await names(rt) == [spec.name], "adopted, not duplicated"


async def test_a_created_but_never_started_container_is_started(node: Node) -> None:
    spec = node.sleeper(random_run_id())
    rt = await node.made_before(spec, started=False)
    [info] = await rt.list_managed()
    assert info.state == "creating"
    started = await rt.start(spec)
    assert started.state == "running"
    assert await names(rt) == [spec.name]


# -- state changes --------------------------------------------------------------------------


async def test_exit_codes_are_observed(node: Node) -> None:
    rt = node.runtime()
    run_id = random_run_id()
    ok, failed = node.exiting(run_id, 0, replica=0), node.exiting(run_id, 3, replica=1)
    killed = node.sleeper(run_id, "worker", 0)
    for spec in (ok, failed, killed):
        await node.start(rt, spec)
    await node.kill(rt, killed.name)
    for spec, code in ((ok, 0), (failed, 3), (killed, 137)):
        info = await wait_for_state(rt, spec.name, "exited")
        assert info.exit_code == code, spec.name
        inspected = await rt.inspect(spec.name)
        assert inspected is not None and (inspected.state, inspected.exit_code) == ("exited", code)


async def test_an_exit_is_announced(node: Node) -> None:
    rt = node.runtime()
    spec = node.sleeper(random_run_id())
    await node.start(rt, spec)
    changed = asyncio.Event()
    feed = asyncio.create_task(rt.watch_changes(changed.set))
    try:
        await asyncio.sleep(0.5)  # the feed is open
        changed.clear()
        await node.kill(rt, spec.name)
        await asyncio.wait_for(changed.wait(), 10)
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)


async def test_a_container_removed_outside_is_no_longer_listed(node: Node) -> None:
    rt = node.runtime()
    gone, kept = node.sleeper(random_run_id()), node.sleeper(random_run_id())
    await node.start(rt, gone)
    await node.start(rt, kept)
    await node.remove_outside(rt, gone.name)
    assert await names(rt) == [kept.name]
    assert await rt.inspect(gone.name) is None


# -- teardown ---------------------------------------------------------------------------------


async def test_stop_run_stops_only_that_run(node: Node) -> None:
    rt = node.runtime()
    run_a, run_b = random_run_id(), random_run_id()
    a0, a1 = node.sleeper(run_a, "worker", 0), node.sleeper(run_a, "worker", 1)
    b0 = node.sleeper(run_b)
    for spec in (a0, a1, b0):
        await node.start(rt, spec)
    await rt.stop_run(run_a)
    states = {i.name: (i.state, i.exit_code) for i in await rt.list_managed()}
    assert states == {
        a0.name: ("exited", 143),
        a1.name: ("exited", 143),
        b0.name: ("running", None),
    }


async def test_remove_run_removes_only_that_run_and_is_idempotent(node: Node) -> None:
    rt = node.runtime()
    run_a, run_b = random_run_id(), random_run_id()
    a_specs = [node.sleeper(run_a, "worker", 0), node.exiting(run_a, 0)]
    b0 = node.sleeper(run_b)
    for spec in [*a_specs, b0]:
        await node.start(rt, spec)
    await wait_for_state(rt, a_specs[1].name, "exited")
    removed = await rt.remove_run(run_a)
    assert sorted(i.name for i in removed) == sorted(s.name for s in a_specs)
    assert all(i.run_id == run_a for i in removed)
    assert await names(rt) == [b0.name]
    for spec in a_specs:
        assert await rt.inspect(spec.name) is None
    assert await rt.remove_run(run_a) == []


# -- listing ---------------------------------------------------------------------------------


async def test_listing_is_limited_to_the_nodes_cluster_once_known(node: Node) -> None:
    rt = node.runtime()
    run_id = random_run_id()
    ours = replace(node.sleeper(run_id, "job", 0), cluster_id=CLUSTER_A)
    theirs = replace(node.sleeper(run_id, "worker", 0), cluster_id=CLUSTER_B)
    unlabelled = node.sleeper(run_id, "worker", 1)
    for spec in (ours, theirs, unlabelled):
        await node.start(rt, spec)
    assert await names(rt) == sorted([ours.name, theirs.name, unlabelled.name])

    rt.cluster.cluster_id = CLUSTER_A
    assert await names(rt) == sorted([ours.name, unlabelled.name])
    await rt.stop_run(run_id)
    removed = await rt.remove_run(run_id)
    assert sorted(i.name for i in removed) == sorted([ours.name, unlabelled.name])
    rt.cluster.cluster_id = CLUSTER_B
    [left] = await rt.list_managed()
    assert (left.name, left.state) == (theirs.name, "running"), "another cluster's is left alone"


async def test_other_nodes_containers_are_invisible(node: Node) -> None:
    mine = node.runtime()
    spec = node.sleeper(random_run_id())
    await node.start(mine, spec)
    if isinstance(node, RealNode):  # several agents share one Podman host
        other = node.runtime(node_name=f"{node.podman.node}-other")
    else:
        other = FakeNode().runtime()
    assert await names(other) == []
    assert await other.inspect(spec.name) is None
    assert await other.remove_run(spec.run_id) == []
    assert await names(mine) == [spec.name]


# -- endpoints -------------------------------------------------------------------------------


async def test_a_serving_worker_is_probed_at_its_hostname(node: Node) -> None:
    rt = node.runtime()
    spec = node.server(random_run_id())
    info = await node.start(rt, spec)
    [target] = rt.endpoint_targets(info)
    assert (target.name, target.address) == ("http", f"{spec.hostname}:8000")
    await wait_probe(rt, info)


async def test_host_port_mode_publishes_each_endpoint_on_its_own_port(node: Node) -> None:
    lo = 32000 + secrets.randbelow(600)
    rt = node.runtime(
        network_mode="host-port", advertise_address="127.0.0.1", port_range=(lo, lo + 40)
    )
    run_id = random_run_id()
    workers = [
        node.sleeper(run_id, "worker", i, endpoints={"http": 8000, "ssh": 22}) for i in range(2)
    ]
    job = node.sleeper(run_id, "job", 0)
    infos = [await node.start(rt, s) for s in [*workers, job]]
    ports = [p for info in infos[:2] for p in info.host_ports.values()]
    assert len(set(ports)) == 4 and all(lo <= p <= lo + 40 for p in ports)
    assert infos[2].host_ports == {}, "a job publishes nothing"
    listed = {i.name: i.host_ports for i in await rt.list_managed()}
    assert listed == {i.name: i.host_ports for i in infos}
    for info in infos[:2]:
        addresses = {t.name: t.address for t in rt.endpoint_targets(info)}
        assert addresses == {n: f"127.0.0.1:{p}" for n, p in info.host_ports.items()}


# -- logs ------------------------------------------------------------------------------------


async def test_logs_are_followed_from_the_first_line_to_the_end(node: Node) -> None:
    rt = node.runtime()
    lines = [f"line-{i}" for i in range(5)]
    spec = node.printing(random_run_id(), lines)
    await node.start(rt, spec)
    await wait_for_state(rt, spec.name, "exited")

    async def read() -> list[tuple[str, str]]:
        return [
            (line.stream, line.text) async for chunk in rt.follow_logs(spec.name) for line in chunk
        ]

    expected = [("stdout", line) for line in lines]
    assert await asyncio.wait_for(read(), 30) == expected
    assert await asyncio.wait_for(read(), 30) == expected, "following again starts over"
