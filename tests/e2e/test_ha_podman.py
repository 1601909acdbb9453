"""Failover on real Podman: two control plane processes on one PostgreSQL
database (docs/ha.md), two agent processes driving the host's Podman and
knowing both control planes, and a distributed run in progress (2 workers, a
job that works for a few seconds) when the leader is killed with SIGKILL. A
new leader takes over within 10 s, the run succeeds, no container is created
twice (Podman's own create events), `muster run watch --server a,b` carries on,
and nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from muster.v1 import run_pb2 as rpb
from tests.conftest import BIN, isolated_env, run_cli
from tests.e2e.conftest import PYTHON, podman
from tests.integration.test_cluster_fake_runtime import get_run, until
from tests.integration.test_ha_failover import Plane, leads, planes, the_leader, watch

pytestmark = [pytest.mark.podman, pytest.mark.timeout(180)]
__all__ = ["planes"]  # the fixture, used by name

WORKER = """
import os, socketserver
class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(("worker " + os.environ["TYGER_WORKER_INDEX"] + "\\n").encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Answer).serve_forever()
"""
JOB = """
import json, os, socket, time
time.sleep(12)  # long enough to lose the leader mid-run
for address in json.loads(os.environ["TYGER_ECHO_WORKER_ENDPOINT_ADDRESSES"]):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        print(conn.makefile().readline().strip(), flush=True)
"""


@pytest.fixture
def agents(planes: list[Plane], tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two agents (pools cpu, gpu) on the host's Podman, knowing both control
    planes; their processes, containers and network are removed afterwards."""
    tag = f"ha{secrets.token_hex(3)}"
    network = f"muster-test-{tag}"
    servers = ",".join(p.address for p in planes)
    procs: list[subprocess.Popen[bytes]] = []
    nodes = {"cpu": f"{tag}-cpu", "gpu": f"{tag}-gpu"}
    try:
        for pool, node in nodes.items():
            log = open(tmp_path / f"agent-{pool}.log", "wb")
            # fmt: off
            command = [str(BIN / "muster-agent"), "--insecure", "--server", servers,
                       "--node-name", node, "--pool", pool, "--network", network,
                       "--state-dir", str(tmp_path / f"agent-{pool}")]
            # fmt: on
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        yield nodes
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in nodes.values():
            ids = podman("ps", "-aq", "--filter", f"label=muster.node={node}", check=False)
            if ids.stdout.split():
                podman("rm", "-f", "-t", "0", *ids.stdout.split(), check=False)
        podman("network", "rm", "-f", network, check=False)


def cli(server: str, *args: str) -> str:
    return run_cli(*args, server=server, check=True).stdout


def created_ids(nodes: dict[str, str], since: str) -> dict[str, set[str]]:
    """Container ids Podman's `create` events name, by container name, for
    these nodes since `since` (UTC). Podman 4.3's event log may lose events
    under load, never invent them: a name with two ids was created twice."""
    out = podman(
        "events", "--since", since, "--stream=false", "--format", "json",
        "--filter", "event=create", "--filter", "type=container",
    ).stdout  # fmt: skip
    ids: dict[str, set[str]] = {}
    for line in out.splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("Attributes", {}).get("muster.node") in set(nodes.values()):
            ids.setdefault(event["Name"], set()).add(event["ID"])
    return ids


async def test_sigkill_of_the_leader_mid_run_on_real_podman(
    planes: list[Plane], agents: dict[str, str], tmp_path: Path
) -> None:
    leader = await the_leader(planes)
    other = next(p for p in planes if p is not leader)
    both = f"{leader.address},{other.address}"
    for name, kind, code in (("w", "worker", WORKER), ("j", "job", JOB)):
        spec = {"kind": kind, "image": PYTHON, "command": ["python3", "-u", "-c", code]}
        if kind == "worker":
            spec["endpoints"] = {"echo": 7000}
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        cli(both, "codespec", "create", name, "-f", str(tmp_path / f"{name}.json"))

    async def ready() -> bool:
        listed = json.loads(cli(both, "node", "list", "-o", "json"))
        return sum(n["status"] == "Ready" for n in listed) == 2

    await until(ready, 30, "both agents Ready")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    run_id = int(cli(both, "run", "create", "-c", "j", "--node-pool", "cpu",
                     "--worker-codespec", "w", "--worker-replicas", "2",
                     "--worker-node-pool", "gpu").strip())  # fmt: skip

    async def released() -> bool:
        return (await get_run(leader.address, run_id)).status == rpb.RUN_STATUS_RUNNING

    await until(released, 60, "the job to be released")
    watcher = watch(both, run_id, tmp_path)
    try:
        await asyncio.sleep(1)  # the watch follows the leader
        killed = time.monotonic()
        leader.process.kill()
        await until(lambda: leads(other.address), 10, "a new leader within 10 s")
        print(f"\nnew leader {time.monotonic() - killed:.1f} s after SIGKILL of the leader")

        async def succeeded() -> bool:
            run = await get_run(other.address, run_id)
            assert run.status in (rpb.RUN_STATUS_RUNNING, rpb.RUN_STATUS_SUCCEEDED), run
            return run.status == rpb.RUN_STATUS_SUCCEEDED

        await until(succeeded, 60, "Succeeded under the new leader")
        out, err = await asyncio.to_thread(watcher.communicate, timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    assert "Succeeded" in out
    logs = run_cli("run", "logs", str(run_id), server=both, env=isolated_env(), check=True)
    assert logs.stdout.splitlines() == ["[job] worker 0", "[job] worker 1"], logs.stdout
    ids = created_ids(agents, since)
    assert ids and all(len(found) == 1 for found in ids.values()), f"created twice: {ids}"
    assert len(ids) <= 3, ids
