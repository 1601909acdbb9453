"""Nothing a program prints loses logs or liveness (real Podman, real processes):
a 5 MB line, 30 MB without a newline, and a flood of lines while the node must
stay Ready and another run must go through.

CI-sized: the flood is 200,000 lines of 200 bytes; `benchmarks/bench_logs.py`
runs the same scenarios bigger and prints more figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil

from muster.v1 import node_pb2, node_pb2_grpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.e2e.conftest import PYTHON, Cluster, wait_for


class Sampler:
    """Calls ``sample()`` every ``period`` seconds in a thread until stopped."""

    def __init__(self, sample: Callable[[], object], period: float = 0.1) -> None:
        self.values: list[object] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.values.append(sample())
                except Exception as exc:  # recorded; the test decides
                    self.errors.append(exc)
                self._stop.wait(period)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[object]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.values


def python_codespec(cluster: Cluster, name: str, program: str) -> None:
    cluster.cli(
        "codespec",
        "create",
        name,
        "--image",
        PYTHON,
        "--command",
        "--",
        "python3",
        "-c",
        program,
        check=True,
    )


def logs(cluster: Cluster, run_id: int, *args: str) -> list[str]:
    return cluster.cli("run", "logs", str(run_id), *args, check=True, timeout=120).stdout.split(
        "\n"
    )[:-1]


def test_a_5mb_line_comes_back_whole_and_the_next_line_too(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    python_codespec(
        cluster,
        "long-line",
        "import sys\n"
        "sys.stdout.write(''.join(f'{i:07d}' for i in range(750_000)) + '\\n')\n"
        "print('a normal line')",
    )
    run_id = cluster.create_run("-c", "long-line")
    assert cluster.wait_run(run_id, timeout=60)["status"] == "Succeeded"
    cluster.wait_no_containers(run_id, timeout=30)
    expected = "".join(f"{i:07d}" for i in range(750_000))  # 5.25 MB
    assert logs(cluster, run_id) == [expected, "a normal line"]
    assert logs(cluster, run_id, "--tail", "1") == ["a normal line"]


def test_30mb_without_a_newline_succeeds_with_the_agents_memory_bounded(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    agent = psutil.Process(cluster.agents[cluster.node("a")].pid)
    python_codespec(
        cluster,
        "no-newline",
        "import sys\n"
        "for i in range(30):\n"
        "    sys.stdout.write(chr(97 + i % 26) * 1_000_000); sys.stdout.flush()",
    )
    rss = Sampler(lambda: agent.memory_info().rss)
    try:
        run_id = cluster.create_run("-c", "no-newline")
        assert cluster.wait_run(run_id, timeout=90)["status"] == "Succeeded"
        cluster.wait_no_containers(run_id, timeout=60)
    finally:
        peak = max(rss.stop(), default=0)
    out = logs(cluster, run_id)
    assert len(out) == 1 and len(out[0]) == 30_000_000
    assert out[0] == "".join(chr(97 + i % 26) * 1_000_000 for i in range(30))
    print(f"\n30 MB without a newline: agent peak RSS {peak / 2**20:.0f} MiB")
    assert 0 < peak < 300 * 2**20


def test_a_log_flood_leaves_the_node_ready_and_another_run_going(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    node = cluster.node("a")
    total = 200_000
    python_codespec(
        cluster,
        "flood",
        f"import sys\nfor i in range({total}): sys.stdout.write(f'{{i:08d}} ' + 'f' * 191 + '\\n')",
    )
    cluster.shell_codespec("small", "echo small-run-done")
    channel = cluster.channel()
    nodes = node_pb2_grpc.NodeServiceStub(channel)
    runs = rgrpc.RunServiceStub(channel)

    def status() -> int:
        listed = nodes.ListNodes(node_pb2.ListNodesRequest(), timeout=5).nodes
        return next(n.status for n in listed if n.name == node)

    def last_line(run_id: int) -> str:
        request = rpb.GetRunLogsRequest(run_id=run_id, tail=1)
        return "".join(line.text for r in runs.GetRunLogs(request, timeout=10) for line in r.lines)

    watch = Sampler(status, period=0.2)
    try:
        flood = cluster.create_run("-c", "flood")
        wait_for(lambda: last_line(flood), 30, "the flood's first lines", 0.05)
        began = time.monotonic()
        small = cluster.create_run("-c", "small")
        assert cluster.wait_run(small, timeout=10)["status"] == "Succeeded"
        small_took = time.monotonic() - began
        assert cluster.wait_run(flood, timeout=60)["status"] == "Succeeded"
        ended = time.monotonic()
        want = f"{total - 1:08d} " + "f" * 191
        wait_for(lambda: last_line(flood) == want, 30, "the flood's last line", 0.05)
        readable = time.monotonic() - ended
    finally:
        statuses = watch.stop()
        channel.close()
    out = logs(cluster, flood)
    assert out == [f"{i:08d} " + "f" * 191 for i in range(total)]
    assert logs(cluster, small) == ["small-run-done"]
    print(
        f"\n{total:,}-line flood: node {sorted(set(statuses))} over {len(statuses)} looks; "
        f"a second run succeeded in {small_took:.1f}s; every line readable "
        f"{readable:.2f}s after the run ended"
    )
    assert statuses and set(statuses) == {node_pb2.NODE_STATUS_READY}, watch.errors
    assert small_took < 10
    assert readable < 5
