"""`muster node cordon|drain|uncordon` and what `node list` shows, against a
real secure control plane process, with one agent (the agent's own code on the
fake runtime, in a thread of this process) that joined with a join token."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.app import run_agent
from agent.config import parse_args
from agent.connection import Backoff
from agent.runtime_fake import FakeRuntime
from tests.conftest import Process, run_cli, wait_for


class ThreadAgent:
    """A joined agent with a fake runtime, running its own event loop in a thread."""

    def __init__(self, cp: Process, name: str, state: Path) -> None:
        token = run_cli("node", "join-token", "create", "--pool", "cpu", server=cp, check=True)
        self.config = parse_args(
            [
                "--server", cp.address, "--ca-cert", str(cp.ca_cert),
                "--join-token", token.stdout.strip(), "--state-dir", str(state),
                "--node-name", name, "--pool", "cpu", "--cpus", "4", "--memory", "8Gi",
            ]
        )  # fmt: skip
        self.runtime: FakeRuntime | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self.started.wait(10), "the agent thread did not start"

    async def _main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        self.runtime = FakeRuntime(node_name=self.config.node_name)
        self.started.set()
        await run_agent(
            self.config, runtime=self.runtime, stop=self.stop, backoff=Backoff(maximum=0.3)
        )

    def exit(self, container: str, code: int) -> None:
        """Let a container exit (on the agent's loop)."""
        assert self.loop is not None and self.runtime is not None
        self.loop.call_soon_threadsafe(self.runtime.exit, container, code)

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(15)


@pytest.fixture
def agent(cp_process: Process, tmp_path: Path) -> Iterator[ThreadAgent]:
    joined = ThreadAgent(cp_process, "n1", tmp_path / "n1")
    try:
        wait_for(lambda: listed(cp_process).get("n1", {}).get("status") == "Ready", 30, "n1 Ready")
        yield joined
    finally:
        joined.close()


def listed(cp: Process) -> dict[str, dict]:
    out = run_cli("node", "list", "-o", "json", server=cp, check=True).stdout
    return {n["name"]: n for n in json.loads(out)}


def status_column(cp: Process, name: str) -> str:
    table = run_cli("node", "list", server=cp, check=True).stdout
    rows = [line.split() for line in table.splitlines()]
    header = rows[0]
    row = next(r for r in rows[1:] if r[0] == name)
    return row[header.index("STATUS")]


def one_line(*args: str, cp: Process) -> str:
    result = run_cli(*args, server=cp)
    assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
    assert result.stdout.count("\n") == 1, result.stdout
    return result.stdout.strip()


def test_cordon_drain_uncordon_from_the_cli(cp_process: Process, agent: ThreadAgent) -> None:
    cp = cp_process
    assert status_column(cp, "n1") == "Ready"
    assert one_line("node", "cordon", "n1", cp=cp) == (
        "node 'n1' cordoned: no new runs are placed there; 0 replicas stay"
    )
    assert status_column(cp, "n1") == "Ready,Cordoned"
    assert listed(cp)["n1"]["cordoned"] is True

    run_cli("codespec", "create", "j", "--image", "img", server=cp, check=True)
    waiting = run_cli("run", "create", "-c", "j", "--node-pool", "cpu", server=cp, check=True)
    run_id = waiting.stdout.strip()

    def reason() -> str:
        shown = run_cli("run", "show", run_id, "-o", "json", server=cp, check=True).stdout
        return json.loads(shown)["statusReason"]

    wait_for(lambda: reason() == "waiting: every node of pool cpu is cordoned", 15, "the reason")
    assert one_line("node", "uncordon", "n1", cp=cp) == "node 'n1' uncordoned: schedulable again"
    assert status_column(cp, "n1") == "Ready"

    def running() -> bool:
        shown = run_cli("run", "show", run_id, "-o", "json", server=cp, check=True).stdout
        return json.loads(shown)["status"] == "Running"

    wait_for(running, 15, "the run Running on n1")
    line = one_line("node", "drain", "n1", "--deadline", "1h", cp=cp)
    assert line.startswith("node 'n1' draining: 1 replica there; runs still there at 20")
    assert line.endswith("Z are canceled")
    assert status_column(cp, "n1") == "Ready,Draining"
    node = listed(cp)["n1"]
    assert (node["cordoned"], node["draining"], "drainDeadline" in node) == (True, True, True)
    assert one_line("node", "drain", "n1", cp=cp) == (
        "node 'n1' draining: 1 replica there; no deadline"
    )  # a new drain replaces the deadline
    assert "drainDeadline" not in listed(cp)["n1"]

    shown = json.loads(run_cli("run", "show", run_id, "-o", "json", server=cp, check=True).stdout)
    agent.exit(shown["replicas"][0]["containerName"], 0)  # the name the control plane reports
    wait_for(lambda: status_column(cp, "n1") == "Ready,Drained", 15, "n1 drained")
    node = listed(cp)["n1"]
    assert (node["cordoned"], node.get("draining", False), "drainedAt" in node) == (
        True,
        False,
        True,
    )
    assert one_line("node", "drain", "n1", cp=cp) == (
        "node 'n1' drained: no run has a replica there"
    )
    one_line("node", "uncordon", "n1", cp=cp)
    node = listed(cp)["n1"]
    assert not ({"cordoned", "draining", "drainDeadline", "drainedAt"} & set(node))


def test_node_maintenance_errors(cp_process: Process) -> None:
    for args, code, text in [
        (
            ("node", "cordon", "x"),
            1,
            "error: The node 'x' was not found; `muster node list` shows them.",
        ),
        (("node", "uncordon", "x"), 1, "error: The node 'x' was not found"),
        (("node", "drain", "x", "--deadline", "10m"), 1, "error: The node 'x' was not found"),
        (("node", "drain", "x", "--deadline", "soon"), 2, "'soon' is not a duration"),
        (("node", "drain", "x", "--deadline", "-1h"), 2, "is not a duration"),
        (("node", "cordon"), 2, "Missing argument 'NAME'"),
    ]:
        result = run_cli(*args, server=cp_process)
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and text in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    # Admin only: a user's token is refused, in one line that names the role.
    user = run_cli("token", "create", "u", "--role", "user", server=cp_process, check=True)
    refused = run_cli(
        "node", "cordon", "x", server=cp_process, env={"MUSTER_TOKEN": user.stdout.strip()}
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr == (
        "error: the token 'u' has role user; CordonNode needs role admin or higher\n"
    )
