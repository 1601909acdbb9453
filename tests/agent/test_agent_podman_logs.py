"""Log shipping on real Podman: the runtime's log reader and the agent end to end."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import pytest

from agent import podman_logs_reader
from agent.runtime import LogLine
from agent.runtime_podman import PodmanRuntime
from muster.v1 import run_pb2
from tests.agent.conftest import StartAgent
from tests.agent.fakecp import FakeControlPlane
from tests.agent.podman_support import (
    BUSYBOX,
    PYTHON,
    PodmanNode,
    random_run_id,
    spec,
    wait_for_state,
)
from tests.agent.test_agent_logs import index_of_status, last_log_index

pytestmark = pytest.mark.podman

RUNNING = run_pb2.CONTAINER_STATE_RUNNING
EXITED = run_pb2.CONTAINER_STATE_EXITED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
STDOUT = run_pb2.LOG_STREAM_STDOUT
STDERR = run_pb2.LOG_STREAM_STDERR
NS = 1_000_000_000


async def read_all(rt: PodmanRuntime, name: str, within: float = 30.0) -> list[LogLine]:
    """Everything ``follow_logs`` yields until it ends."""
    lines: list[LogLine] = []

    async def run() -> None:
        async for chunk in rt.follow_logs(name):
            lines.extend(chunk)

    await asyncio.wait_for(run(), within)
    return lines


def start_job(fake_cp: FakeControlPlane, run_id: int, image: str, command: list[str]) -> str:
    """Send StartContainer for job replica 0 running ``command``; return its name."""
    name = f"muster-run-{run_id}-job-0"
    fake_cp.start_container(
        run_id=run_id,
        role=run_pb2.REPLICA_ROLE_JOB,
        replica=0,
        container_name=name,
        hostname=f"run-{run_id}-job-0",
        image=image,
        command=command[:1],
        args=command[1:],
    )
    return name


def entry_ns(entry: object) -> int:
    return entry.time.seconds * NS + entry.time.nanos  # type: ignore[attr-defined]


@pytest.mark.parametrize("log_files", [True, False], ids=["file", "api"])
async def test_follow_logs_reads_both_streams_partial_long_and_unfinished_lines(
    podman_node: PodmanNode, log_files: bool
) -> None:
    rt = podman_node.runtime(log_files=log_files)
    program = (
        "import sys, time\n"
        "o, e = sys.stdout, sys.stderr\n"
        "o.write('out1\\n'); o.flush(); e.write('err1\\n'); e.flush()\n"
        "o.write('half-'); o.flush(); time.sleep(0.8)\n"  # a partial line across reads
        "o.write('line\\n' + 'x' * 20000 + '\\n'); o.flush()\n"  # longer than conmon's buffer
        "o.buffer.write(b'bad \\xff \\xc3\\xbc\\n'); o.flush()\n"
        "e.write('unfinished'); e.flush()\n"
    )
    before = time.time_ns()
    info = await rt.start(spec(random_run_id(), "job", 0, PYTHON, ["python3", "-c"], [program]))
    lines = await read_all(rt, info.name)
    after = time.time_ns()
    assert [(x.stream, x.text) for x in lines if x.stream == "stdout"] == [
        ("stdout", "out1"),
        ("stdout", "half-line"),
        ("stdout", "x" * 20000),
        ("stdout", "bad \ufffd ü"),
    ]
    assert [x.text for x in lines if x.stream == "stderr"] == ["err1", "unfinished"]
    # Podman 4.3's API stamps whole seconds (the file has nanoseconds); they
    # must still be the container's times.
    assert all(before - NS <= x.time_ns <= after for x in lines)
    # A second follow of the stopped container reads the same lines again, and ends.
    assert await read_all(rt, info.name) == lines


async def test_follow_logs_of_a_removed_container_ends(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    run_id = random_run_id()
    info = await rt.start(
        spec(run_id, "job", 0, BUSYBOX, ["sh", "-c"], ["echo up; exec sleep 300"])
    )
    got: list[LogLine] = []

    async def follow() -> None:
        async for chunk in rt.follow_logs(info.name):
            got.extend(chunk)

    follower = asyncio.create_task(follow())
    try:
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
        assert [x.text for x in got] == ["up"]
        await rt.remove_run(run_id)
        await asyncio.wait_for(follower, 10)
    finally:
        follower.cancel()


async def test_agent_ships_three_lines_with_their_streams_and_times(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    await start_agent(
        podman_node.runtime(), node_name=podman_node.node, network=podman_node.network
    )
    stream = await fake_cp.wait_registered()
    run_id = random_run_id()
    before = time.time_ns()
    name = start_job(fake_cp, run_id, BUSYBOX, ["sh", "-c", "echo out1; echo err1 >&2; echo out2"])
    await fake_cp.wait_status(name, EXITED, within=30)
    # REMOVED goes out only after every line: then nothing more may come.
    fake_cp.teardown(run_id)
    await fake_cp.wait_status(name, REMOVED, within=30)
    entries = stream.log_entries(name)
    # conmon reads the two pipes separately: how they interleave is not fixed.
    assert sorted((e.stream, e.sequence, e.text) for e in entries) == [
        (STDOUT, 0, "out1"),
        (STDOUT, 1, "out2"),
        (STDERR, 0, "err1"),
    ]
    assert {(e.run_id, e.role, e.replica) for e in entries} == {
        (run_id, run_pb2.REPLICA_ROLE_JOB, 0)
    }
    times = [entry_ns(e) for e in entries]
    assert times == sorted(times), "in shipping order, timestamps never go backwards"
    assert before - NS <= times[0] <= time.time_ns()

    fake_cp.teardown(run_id)
    await fake_cp.wait_status(name, REMOVED, within=30)
    assert last_log_index(stream, name) < index_of_status(stream, name, REMOVED)


async def test_agent_ships_100000_lines_in_order_while_heartbeats_keep_flowing(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    await start_agent(
        podman_node.runtime(), node_name=podman_node.node, network=podman_node.network
    )
    stream = await fake_cp.wait_registered()
    await fake_cp.wait_for(lambda: len(stream.heartbeats) >= 1, what="a first heartbeat")
    total = 100_000
    loop = asyncio.get_running_loop()
    began = loop.time()
    name = start_job(
        fake_cp,
        random_run_id(),
        PYTHON,
        ["python3", "-c", f"import sys; [print(i) for i in range({total})]"],
    )
    await fake_cp.wait_for(lambda: stream.log_count() >= total, within=30, what=f"{total} lines")
    elapsed = loop.time() - began
    entries = stream.log_entries(name)
    assert [e.sequence for e in entries] == list(range(total))
    assert [e.text for e in entries] == [str(i) for i in range(total)]
    assert {e.stream for e in entries} == {STDOUT}
    # One more heartbeat after the flood, then the largest gap while it lasted.
    count = len(stream.heartbeats)
    await fake_cp.wait_for(lambda: len(stream.heartbeats) > count, what="a later heartbeat")
    arrivals = [t for t in stream.heartbeat_arrivals if t >= began - 1.0]
    gap = max(b - a for a, b in itertools.pairwise(arrivals))
    print(
        f"\n100k lines: {elapsed:.2f}s from StartContainer to last line, "
        f"{total / elapsed:,.0f} lines/s; heartbeat interval {fake_cp.heartbeat_seconds}s, "
        f"max gap {gap:.2f}s over {len(arrivals)} heartbeats; "
        f"{len(stream.log_batches)} batches"
    )
    assert gap < 3 * fake_cp.heartbeat_seconds
    assert elapsed < 30


async def test_teardown_ships_every_line_before_removed(
    podman_node: PodmanNode, fake_cp: FakeControlPlane, start_agent: StartAgent
) -> None:
    rt = podman_node.runtime()
    await start_agent(rt, node_name=podman_node.node, network=podman_node.network)
    stream = await fake_cp.wait_registered()
    finished_run, running_run = random_run_id(), random_run_id()
    finished = start_job(
        fake_cp, finished_run, BUSYBOX, ["sh", "-c", "seq 1 5000; echo bye >&2; printf end"]
    )
    running = start_job(fake_cp, running_run, BUSYBOX, ["sh", "-c", "seq 1 3000; exec sleep 300"])
    await fake_cp.wait_status(finished, EXITED, within=30)
    await fake_cp.wait_status(running, RUNNING, within=30)
    await wait_for_state(rt, finished, "exited")
    # Tear down at once: most lines have not been shipped yet.
    fake_cp.teardown(finished_run)
    fake_cp.teardown(running_run)
    await fake_cp.wait_status(finished, REMOVED, within=30)
    await fake_cp.wait_status(running, REMOVED, within=30)

    def texts(name: str, which: int) -> list[str]:
        return [e.text for e in stream.log_entries(name) if e.stream == which]

    assert texts(finished, STDOUT) == [str(i) for i in range(1, 5001)] + ["end"]
    assert texts(finished, STDERR) == ["bye"]
    assert texts(running, STDOUT) == [str(i) for i in range(1, 3001)]
    for name in (finished, running):
        assert last_log_index(stream, name) < index_of_status(stream, name, REMOVED)
        assert not await podman_node.exists(name)


def joined(lines: list[LogLine]) -> list[str]:
    """Texts with parts joined into lines (one stream)."""
    out, begun = [], ""
    for x in lines:
        begun += x.text
        if not x.partial:
            out.append(begun)
            begun = ""
    assert begun == ""
    return out


@pytest.mark.parametrize("log_files", [True, False], ids=["file", "api"])
async def test_long_lines_and_output_without_newline_come_in_parts(
    podman_node: PodmanNode, log_files: bool
) -> None:
    rt = podman_node.runtime(log_files=log_files)
    program = (
        "import sys\n"
        "sys.stdout.write('é' * 100_000 + '\\nshort\\n'); sys.stdout.flush()\n"
        "sys.stdout.write('n' * 150_000)\n"  # no newline at all
    )
    info = await rt.start(spec(random_run_id(), "job", 0, PYTHON, ["python3", "-c"], [program]))
    lines = await read_all(rt, info.name)
    assert joined(lines) == ["é" * 100_000, "short", "n" * 150_000]
    assert max(len(x.text.encode()) for x in lines) <= 64 * 1024
    assert [len(x.text.encode()) for x in lines if x.text.startswith("n")] == [65536, 65536, 18928]


async def test_the_file_reader_loses_nothing_when_conmon_starts_a_new_log_file(
    podman_node: PodmanNode,
) -> None:
    """At the size cap conmon replaces the file; the reader finishes the old one first."""
    rt = podman_node.runtime(log_max_size=16 * 1024, log_file_poll=(0.02, 0.1))
    program = (
        "import sys, time\n"
        "for burst in range(8):\n"
        "    for i in range(100): print(f'{burst * 100 + i:05d} ' + 'r' * 40)\n"
        "    sys.stdout.flush(); time.sleep(0.3)\n"
    )
    info = await rt.start(spec(random_run_id(), "job", 0, PYTHON, ["python3", "-c"], [program]))
    lines = await read_all(rt, info.name)
    assert [x.text for x in lines] == [f"{i:05d} " + "r" * 40 for i in range(800)]
    inspect = await podman_node.inspect(info.name)
    size = await asyncio.to_thread(os.path.getsize, inspect["HostConfig"]["LogConfig"]["Path"])
    assert size <= 16 * 1024 < 800 * 46, "more was read than one file may hold"


async def test_an_unreadable_log_file_falls_back_to_the_api(
    podman_node: PodmanNode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreadable(path: str, *args: object) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(podman_logs_reader, "LogFileTail", unreadable)
    rt = podman_node.runtime()
    info = await rt.start(
        spec(random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], ["echo one; echo two >&2"])
    )
    with caplog.at_level(logging.WARNING, logger="agent.podman_logs_reader"):
        lines = await read_all(rt, info.name)
    assert sorted((x.stream, x.text) for x in lines) == [("stderr", "two"), ("stdout", "one")]
    assert "event=log_file_unreadable" in caplog.text and "podman log API" in caplog.text


async def test_a_new_follower_after_a_rotation_keeps_every_lines_number(
    podman_node: PodmanNode,
) -> None:
    """A stream breaks mid-run and conmon replaces the log meanwhile: the next
    follower re-reads the file the first one held, with the same numbers."""
    rt = podman_node.runtime(log_max_size=16 * 1024, log_file_poll=(0.02, 0.1))
    program = (
        "import sys, time\n"
        "for burst in range(8):\n"
        "    for i in range(100): print(f'{burst * 100 + i:05d} ' + 'r' * 40)\n"
        "    sys.stdout.flush(); time.sleep(0.3)\n"
    )
    info = await rt.start(spec(random_run_id(), "job", 0, PYTHON, ["python3", "-c"], [program]))
    first: list[LogLine] = []
    follower = aiter(rt.follow_logs(info.name))
    while len(first) < 150:
        first.extend(await asyncio.wait_for(anext(follower), 10))
    await follower.aclose()  # the stream broke
    await asyncio.sleep(0.5)  # conmon goes on writing (and replaces the file) meanwhile
    second = await read_all(rt, info.name)
    for line in first + second:
        assert line.sequence == int(line.text[:5]), line
    assert {x.text for x in first + second} == {f"{i:05d} " + "r" * 40 for i in range(800)}
    assert second[-1].text.startswith("00799")
