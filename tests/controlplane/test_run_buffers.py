"""Buffers in runs on the control plane: binding rules, buffers made for a
run (tags, TTL), the job's pipes and `$(VAR)` expansion, the outcome of a
job whose copies failed, and failed markers on outputs of runs that ended
badly. In memory, with a fake data plane and a manual clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.api.convert import report_from_pb, run_request_from_pb, run_to_pb, start_to_pb
from controlplane.core import run_buffers as core
from controlplane.core.buffers import BufferFilter
from controlplane.core.capacity import Capacity
from controlplane.core.codespec import Buffers, Codespec
from controlplane.core.containers import ContainerSpec, container_spec
from controlplane.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
)
from controlplane.core.nodes import Node
from controlplane.core.runs import Observation, Target, new_run, observe, place
from controlplane.core.tyger import TygerFields
from controlplane.services.buffers import BufferService
from controlplane.services.codespecs import CodespecService
from controlplane.services.orchestrator import Orchestrator, Report
from controlplane.services.run_buffers import RunBuffers
from controlplane.services.run_requests import RunRequest, TargetRequest, fingerprint
from controlplane.store.documents import run_from_doc, run_to_doc
from controlplane.store.memory import MemoryStore
from muster.common.pipes import PIPE_DIR
from muster.common.timespan import TimeSpanError, format_timespan, timespan_seconds
from muster.v1 import agent_pb2

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
JOB = Codespec(
    name="pipe",
    image="img",
    command=("/bin/run",),
    args=("$(INPUT_PIPE)", "$(OUTPUT_PIPE)", "$$(INPUT_PIPE)", "$(NOPE)", "run=$(TYGER_RUN_ID)"),
    env={"IN": "$(INPUT_PIPE)"},
    buffers=Buffers(("input",), ("output",)),
)


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 100.0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


class FakeDataPlane:
    """Containers, failed markers and URLs; can be told to fail."""

    def __init__(self) -> None:
        self.containers: set[str] = set()
        self.marked: list[str] = []
        self.failing = False
        self.some_marked = asyncio.Event()

    async def create(self, buffer_id: str) -> None:
        self.containers.add(buffer_id)

    async def delete(self, buffer_id: str) -> None:
        self.containers.discard(buffer_id)

    async def mark_failed(self, buffer_id: str) -> None:
        if self.failing:
            raise OSError("data plane down")
        self.marked.append(buffer_id)
        self.some_marked.set()

    def access_url(self, buffer_id: str, *, writable: bool, expires_at: datetime) -> str:
        sp = "cr" if writable else "r"
        return f"https://dp:1/containers/{buffer_id}?sp={sp}&se={expires_at.isoformat()}"


class Link:
    def __init__(self) -> None:
        self.started: list[ContainerSpec] = []

    def start(self, spec: ContainerSpec) -> None:
        self.started.append(spec)

    def teardown(self, run_id: int) -> None:
        pass

    def close(self) -> None:
        pass


class World:
    def __init__(self, data: bool = True) -> None:
        self.store, self.clock = MemoryStore(), Clock()
        self.plane = FakeDataPlane()
        self.buffers = BufferService(self.store, self.plane if data else None, self.clock)
        self.run_buffers = RunBuffers(self.buffers, ca_pem="CA PEM")
        self.codespecs = CodespecService(self.store, self.clock)
        self.orch = Orchestrator(
            self.store,
            self.codespecs,
            clock=self.clock,
            monotonic=lambda: self.clock.mono,
            run_buffers=self.run_buffers,
        )
        self.link = Link()

    async def setup(self) -> World:
        await self.codespecs.create(JOB)
        await self.codespecs.create(Codespec(name="plain", image="img"))
        await self.orch.connect(Node("a", ("cpu",), Capacity(8000, 2**34, 0)), self.link, [])
        return self

    async def count(self) -> tuple[int, int]:
        """(runs, active buffers)."""
        runs = sum((await self.store.count_runs(tags={}, since=None)).values())
        return runs, await self.buffers.count(BufferFilter())

    async def tick(self) -> None:
        await self.orch.reconcile()


@pytest.fixture
async def world() -> World:
    return await World().setup()


def ask(bindings: dict[str, str] | None = None, **kw: object) -> RunRequest:
    job = TargetRequest("pipe", replicas=kw.pop("replicas", None))  # type: ignore[arg-type]
    return RunRequest(job, buffers=dict(bindings or {}), **kw)  # type: ignore[arg-type]


# -- the shared TimeSpan reader ------------------------------------------------


def test_timespans_read_as_tyger_writes_them() -> None:
    assert timespan_seconds("1") == 86_400
    assert timespan_seconds("0.01:30") == 5400
    assert timespan_seconds("02:00") == 7200
    assert timespan_seconds("1.02:03:04") == 93_784
    assert timespan_seconds("00:00:01.5") == 1
    assert format_timespan(93_784) == "1.02:03:04"
    for bad in ("1h", "1.24:00", "00:60", "tomorrow", ""):
        with pytest.raises(TimeSpanError):
            timespan_seconds(bad)


# -- pure rules ----------------------------------------------------------------


def test_bindings_must_name_parameters_and_buffer_ids() -> None:
    assert [p.name for p in core.check_bindings(JOB, {}, 1)] == ["input", "output"]
    with pytest.raises(InvalidArgument) as err:
        core.check_bindings(JOB, {"inptu": "a" * 26}, 1)
    assert "Buffer argument 'inptu' does not correspond to a buffer parameter on the codespec" in (
        str(err.value)
    )
    with pytest.raises(InvalidArgument, match="is not a buffer id"):
        core.check_bindings(JOB, {"input": "nope"}, 1)
    with pytest.raises(InvalidArgument, match="ephemeral buffers"):
        core.check_bindings(JOB, {"input": "_"}, 1)
    with pytest.raises(InvalidArgument, match="does not share pipes across replicas") as err:
        core.check_bindings(JOB, {}, 2)
    assert err.value.field == "job.replicas" and "\n" not in str(err.value)
    assert core.check_bindings(Codespec(name="p", image="i"), {}, 3) == []


def test_new_buffers_are_tagged_with_the_parameter_and_the_job_tags() -> None:
    fields = TygerFields(job_tags={"team": "x", "bufferName": "mine"}, job_buffer_ttl="0.02:00")
    assert core.new_buffer_tags("output", fields) == {"team": "x", "bufferName": "output"}
    assert core.new_buffer_ttl_seconds(fields) == 7200
    assert core.new_buffer_ttl_seconds(TygerFields()) == 0


def test_only_failed_and_canceled_runs_fail_their_outputs() -> None:
    bound = {"input": "i" * 26, "output": "o" * 26}
    assert core.outputs_to_fail("Failed", JOB, bound) == ["o" * 26]
    assert core.outputs_to_fail("Canceled", JOB, bound) == ["o" * 26]
    assert core.outputs_to_fail("Succeeded", JOB, bound) == []


def _placed_run(buffers: dict[str, str]):
    run = new_run(7, Target(JOB, "pipe"), None, T0, timeout_seconds=600)
    run.buffers = buffers
    place(run, {("job", 0): "a"}, T0)
    return run


def test_command_and_args_expand_like_kubernetes() -> None:
    run = _placed_run({"input": "i" * 26, "output": "o" * 26})
    spec = container_spec(run, "job", 0)
    assert spec.env["INPUT_PIPE"] == f"{PIPE_DIR}/input"
    assert spec.env["IN"] == f"{PIPE_DIR}/input"
    assert spec.command == ("/bin/run",)
    assert spec.args == (
        f"{PIPE_DIR}/input",
        f"{PIPE_DIR}/output",
        "$(INPUT_PIPE)",  # $$( escapes
        "$(NOPE)",  # unknown names stay as written
        "run=7",
    )


def test_pipe_variables_keep_dashes_and_workers_get_none() -> None:
    spec = replace(JOB, buffers=Buffers(("raw-in",), ()), args=("$(RAW-IN_PIPE)",))
    run = new_run(3, Target(spec, ""), None, T0)
    place(run, {("job", 0): "a"}, T0)
    job = container_spec(run, "job", 0)
    assert job.env["RAW-IN_PIPE"] == f"{PIPE_DIR}/raw-in" and job.args == (f"{PIPE_DIR}/raw-in",)


def test_a_job_whose_copy_failed_fails_even_with_exit_code_0() -> None:
    run = _placed_run({"input": "i" * 26, "output": "o" * 26})
    observe(run, "a", Observation("job", 0, "running"), T0)
    observe(run, "a", Observation("job", 0, "exited", exit_code=0, buffer_error="output: 403"), T0)
    assert run.status == "Failed"
    assert run.status_reason == "job exited with code 0 but a buffer failed: output: 403"
    ok = _placed_run({})
    observe(ok, "a", Observation("job", 0, "exited", exit_code=0), T0)
    assert ok.status == "Succeeded"


def test_the_wire_carries_buffers_both_ways() -> None:
    msg = agent_pb2.ContainerStatus(
        run_id=7, role=2, replica=0, state=5, exit_code=0, buffer_error="input: gone"
    )
    assert report_from_pb(msg).observation.buffer_error == "input: gone"
    run = _placed_run({"input": "i" * 26, "output": "o" * 26})
    assert dict(run_to_pb(run).buffers) == run.buffers
    assert run_from_doc(run_to_doc(run)).buffers == run.buffers
    assert run_request_from_pb(run_to_pb(run)).buffers == run.buffers
    pipe = core.Pipe("output", True, "o" * 26, "https://x", "PEM")
    started = start_to_pb(container_spec(run, "job", 0, pipes=[pipe]))
    assert [(b.name, b.output, b.buffer_id, b.access_url, b.ca_pem) for b in started.buffers] == [
        ("output", True, "o" * 26, "https://x", "PEM")
    ]


def test_requests_without_bindings_hash_as_before() -> None:
    plain = RunRequest(TargetRequest("pipe"))
    assert fingerprint(plain) != fingerprint(replace(plain, buffers={"input": "a" * 26}))


# -- CreateRun -----------------------------------------------------------------


async def test_unbound_parameters_get_new_tagged_buffers(world: World) -> None:
    given = await world.buffers.create({"kind": "given"})
    fields = TygerFields(job_tags={"team": "x"}, job_buffer_ttl="1.00:00")
    run = await world.orch.create_run(ask({"input": given.id}, tyger=fields))
    assert set(run.buffers) == {"input", "output"} and run.buffers["input"] == given.id
    made = await world.buffers.get(run.buffers["output"])
    assert made.tags == {"team": "x", "bufferName": "output"}
    assert made.expires_at == T0 + timedelta(days=1)
    assert made.id in world.plane.containers
    assert (await world.store.get_run(run.id)).buffers == run.buffers


async def test_a_retried_request_makes_its_buffers_once(world: World) -> None:
    first = await world.orch.create_run(ask(request_id="r" * 20))
    again = await world.orch.create_run(ask(request_id="r" * 20))
    assert again.id == first.id and again.buffers == first.buffers
    assert await world.count() == (1, 2)


@pytest.mark.parametrize(
    ("bindings", "kw", "error", "text"),
    [
        ({"input": "a" * 26}, {}, NotFound, f"The buffer '{'a' * 26}' was not found"),
        ({"extra": "a" * 26}, {}, InvalidArgument, "Buffer argument 'extra' does not correspond"),
        ({"input": "bad"}, {}, InvalidArgument, "'bad' is not a buffer id"),
        ({}, {"replicas": 2}, InvalidArgument, "does not share pipes across replicas"),
        ({}, {"tyger": TygerFields(job_buffer_ttl="99:00")}, InvalidArgument, "out of range"),
    ],
)
async def test_refusals_store_nothing(
    world: World, bindings: dict, kw: dict, error: type, text: str
) -> None:
    with pytest.raises(error) as err:
        await world.orch.create_run(ask(bindings, **kw))
    assert text in str(err.value) and "\n" not in str(err.value)
    assert await world.count() == (0, 0)


async def test_a_deleted_buffer_cannot_be_bound(world: World) -> None:
    gone = await world.buffers.create({})
    from controlplane.services.buffers import Selection

    await world.buffers.delete(Selection(ids=[gone.id]))
    with pytest.raises(NotFound, match=f"The buffer '{gone.id}' was not found"):
        await world.orch.create_run(ask({"input": gone.id}))


async def test_a_worker_codespec_with_buffers_is_refused(world: World) -> None:
    worker = Codespec(name="w", image="i", kind="worker", buffers=Buffers(("in",), ()))
    request = RunRequest(TargetRequest("plain"), TargetRequest(inline=worker))
    with pytest.raises(InvalidArgument, match="a worker codespec cannot declare buffers"):
        await world.orch.create_run(request)
    assert await world.count() == (0, 0)


async def test_without_a_data_plane_jobs_with_buffers_are_refused() -> None:
    world = await World(data=False).setup()
    with pytest.raises(FailedPrecondition, match="runs without a data plane"):
        await world.orch.create_run(ask())
    assert await world.count() == (0, 0)
    assert (await world.orch.create_run(RunRequest(TargetRequest("plain")))).buffers == {}


async def test_buffers_of_a_run_that_could_not_be_stored_are_discarded(world: World) -> None:
    async def broken(*_a: object, **_k: object) -> None:
        raise StoreUnavailable("disk full")

    world.store.insert_run = broken  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await world.orch.create_run(ask(tyger=TygerFields(job_tags={"team": "x"})))
    assert await world.count() == (0, 0)  # soft-deleted, purged by the deleter
    left = await world.buffers.list(BufferFilter({"team": "x"}, soft_deleted=True))
    assert len(left[0]) == 0  # expired at once: out of sight, purged next round


# -- the job's start and the end of the run ------------------------------------


async def test_the_job_start_carries_its_pipes(world: World) -> None:
    run = await world.orch.create_run(ask())
    await world.tick()
    (spec,) = world.link.started
    by_name = {p.name: p for p in spec.buffers}
    assert set(by_name) == {"input", "output"}
    expiry = (T0 + timedelta(seconds=run.timeout_seconds) + timedelta(hours=1)).isoformat()
    assert by_name["input"].access_url.endswith(f"sp=r&se={expiry}")
    assert by_name["output"].access_url.endswith(f"sp=cr&se={expiry}")
    assert by_name["output"].buffer_id == run.buffers["output"]
    assert {p.ca_pem for p in spec.buffers} == {"CA PEM"}
    assert spec.args[:2] == (f"{PIPE_DIR}/input", f"{PIPE_DIR}/output")


async def _ended(world: World, end: str) -> list[str]:
    run = await world.orch.create_run(ask(tyger=TygerFields(job_buffer_ttl="02:00")))
    await world.tick()
    await world.orch.report("a", Report(run.id, Observation("job", 0, "running")))
    if end == "cancel":
        await world.orch.cancel_run(run.id)
    elif end == "timeout":
        world.clock.advance(run.timeout_seconds + 1)
        await world.tick()
    else:
        code = 1 if end == "exit 1" else 0
        await world.orch.report(
            "a", Report(run.id, Observation("job", 0, "exited", exit_code=code))
        )
    assert (await world.store.get_run(run.id)).terminal
    await world.run_buffers.mark_pending()
    return [run.buffers["output"]]


@pytest.mark.parametrize("end", ["cancel", "timeout", "exit 1"])
async def test_runs_that_end_badly_mark_their_outputs_failed(world: World, end: str) -> None:
    outputs = await _ended(world, end)
    assert world.plane.marked == outputs  # the output only, never the input


async def test_a_run_that_succeeds_marks_nothing(world: World) -> None:
    await _ended(world, "exit 0")
    assert world.plane.marked == [] and world.run_buffers.pending == []


async def test_marking_is_retried_while_the_data_plane_fails(world: World) -> None:
    world.plane.failing = True
    task = asyncio.create_task(
        world.run_buffers.run_forever(timedelta(seconds=0.01), timedelta(seconds=0.02))
    )
    try:
        outputs = await _ended(world, "cancel")
        assert world.run_buffers.pending == outputs and world.plane.marked == []
        world.plane.failing = False
        async with asyncio.timeout(5):
            await world.plane.some_marked.wait()
        assert world.plane.marked == outputs and world.run_buffers.pending == []
    finally:
        task.cancel()
