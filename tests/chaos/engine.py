"""Chaos on a real cluster: runs go through a control plane and agents that are
SIGKILLed and restarted at random points; every run must still end exactly as
its code says, no container may be created twice, and nothing may be left.

Used by tests/chaos/test_chaos.py (CI-sized) and benchmarks/bench_chaos.py (long).

The cluster: one `muster-controlplane` process (secure, its own SQLite) and a few
`muster-agent` processes on the host's Podman, with short liveness periods
(heartbeat 1 s, NotReady after 3 s, Lost after LOST_AFTER). One process is down
at a time, for at most MAX_DOWN seconds, and the next kill waits until every
agent is connected again: no node is ever silent for the Lost period, so no run
may fail with "node ... was lost" and every outcome below is exact.

The runs (busybox; the job and worker codespecs are inline):

- ok: a job alone that sleeps and exits 0 -> Succeeded;
- fail: a job alone that sleeps and exits N -> Failed "job exited with code N";
- workers-ok: a job and 2 workers serving HTTP on endpoint http; the job fetches
  a page from every worker, sleeps and exits 0 -> Succeeded;
- workers-fail: the same, exiting N -> Failed "job exited with code N";
- cancel: a job (with or without workers) that sleeps 600 s, canceled after a
  random delay (while Pending or Running) -> Canceled "canceled by user".

A job that cannot reach a worker exits 97, which fails the check.

Each run is created with a unique tag, so a CreateRun whose answer was lost when
the control plane died is found again (ListRuns by tag) instead of made twice.

The runs, their mix and the report are in plans.py; what Podman and /proc show
of the cluster (create events, container listings, processes) in host_watch.py.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from muster.v1 import node_pb2 as npb
from muster.v1 import node_pb2_grpc as ngrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.chaos.host_watch import EVENT_ARGS, ContainerWatch, EventStream
from tests.chaos.host_watch import processes_mentioning as processes_mentioning
from tests.chaos.plans import POOL, STATUS, TERMINAL, Kill, Plan, Report, make_plans
from tests.conftest import start_process
from tests.e2e.conftest import Cluster, podman

HEARTBEAT = 1
NOT_READY_AFTER = 3
LOST_AFTER = 15
MAX_DOWN = 3.0
CP_ARGS = [
    "--heartbeat-interval",
    str(HEARTBEAT),
    "--node-not-ready-after",
    str(NOT_READY_AFTER),
    "--node-lost-after",
    str(LOST_AFTER),
    "--readiness-timeout",
    "60",
]
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
CHANNEL_OPTIONS = [
    # Reconnect quickly after the control plane comes back (grpc's default
    # backoff grows to minutes while it is down).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Chaos:
    """A cluster under chaos. Use as a context manager: everything it starts is
    stopped and removed on exit, even on failure."""

    def __init__(self, tmp: Path, seed: int, agents: int = 3, log: Callable[[str], None] = print):
        self.tmp = tmp
        self.seed = seed
        self.rng = random.Random(seed)
        self.agent_names = [f"a{i}" for i in range(agents)]
        self.log = log
        self.tag = f"c{secrets.token_hex(3)}"
        self.cluster: Cluster | None = None
        self._events: EventStream | None = None
        self._watch: ContainerWatch | None = None
        self.sources: dict[str, int] = {}
        self._lock = threading.Lock()  # one kill/restart (or cluster swap) at a time
        self._processes: list[subprocess.Popen[str]] = []
        self._restarted: dict[str, float] = {}  # node -> wall time its agent or the cp restarted
        self.started = time.monotonic()
        self.wall_start = datetime.now(UTC)

    # -- cluster -----------------------------------------------------------------------------

    def __enter__(self) -> Chaos:
        self.wall_start = datetime.now(UTC)
        self.started = time.monotonic()
        try:
            self._events = EventStream(self._since())
            self._watch = ContainerWatch(lambda: set(self.nodes) if self.cluster else set())
            process = start_process(self.tmp / "cp.db", extra=CP_ARGS)
            self._processes.append(process.proc)
            self.cluster = Cluster(self.tmp, process, f"muster-chaos-{self.tag}", self.tag, CP_ARGS)
            for short in self.agent_names:
                self._start_agent(short, [POOL])
            self.cluster.wait_nodes(len(self.agent_names), timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._events is not None:
            self._events.stop()
        if self._watch is not None:
            self._watch.stop()
        if self.cluster is not None:
            self.cluster.close()  # agents, control plane, containers by node label, network
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    def _start_agent(self, short: str, pools: list[str] | None = None) -> None:
        assert self.cluster is not None
        self.cluster.start_agent(short, pools)
        self._processes.append(self.cluster.agents[self.cluster.node(short)])

    @property
    def nodes(self) -> list[str]:
        assert self.cluster is not None
        return [self.cluster.node(s) for s in self.agent_names]

    def channel(self) -> grpc.Channel:
        assert self.cluster is not None and self.cluster.cp.config is not None
        config = json.loads(self.cluster.cp.config.read_text())
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(config["caCert"].encode()),
            grpc.access_token_call_credentials(config["token"]),
        )
        return grpc.secure_channel(self.cluster.cp.address, creds, options=CHANNEL_OPTIONS)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- killing ---------------------------------------------------------------------------

    def kill_one(self, target: str, down: float) -> Kill:
        """SIGKILL the control plane ("cp") or an agent, wait `down` s, start it again."""
        assert self.cluster is not None
        with self._lock:
            at = self.elapsed()
            if target == "cp":
                self.cluster.cp.proc.kill()
                self.cluster.cp.proc.wait(timeout=10)
                time.sleep(down)
                self.cluster.cp = self.cluster.cp.restart()
                self._processes.append(self.cluster.cp.proc)
                self._restarted = dict.fromkeys(self.nodes, time.time())
            else:
                self.cluster.stop_agent(target, signal.SIGKILL)
                time.sleep(down)
                self._restarted[self.cluster.node(target)] = time.time()
                self._start_agent(target)
        self.log(f"[chaos {self.elapsed():6.1f}s] killed {target} at {at:.1f}s, {down:.1f}s down")
        return Kill(at, target, down)

    def all_connected(self) -> bool:
        """Every agent has a registered stream now, so the next kill is safe: its
        node is Ready, with a heartbeat from the last interval (plus slack) that
        arrived after its agent's (or the control plane's) last restart. (A
        control plane gives every node a fresh heartbeat when it loads, before
        it listens: older than that restart.)"""
        try:
            with self.channel() as ch:
                nodes = ngrpc.NodeServiceStub(ch).ListNodes(npb.ListNodesRequest(), timeout=5).nodes
        except grpc.RpcError:
            return False
        now = time.time()
        seen = {
            n.name
            for n in nodes
            if n.status == npb.NODE_STATUS_READY
            and now - n.last_heartbeat.ToSeconds() <= HEARTBEAT + 1.5
            and n.last_heartbeat.ToSeconds() > self._restarted.get(n.name, 0.0)
        }
        return set(self.nodes) <= seen

    def wait_connected(self, timeout: float = 30) -> float:
        """Seconds until every agent is connected (see `all_connected`)."""
        begun = time.monotonic()
        while not self.all_connected():
            assert time.monotonic() - begun < timeout, f"agents not back within {timeout} s"
            time.sleep(0.1)
        return time.monotonic() - begun

    def drive(self, until: float, report: Report, gap: tuple[float, float] = (0.5, 3.0)) -> None:
        """Kill and restart at random points until `until` s after the start; the
        next kill only once every agent is connected again."""
        rng = random.Random(self.seed + 1)
        targets = ["cp", *self.agent_names]
        first = ["cp", rng.choice(self.agent_names)]  # each kind at least once
        rng.shuffle(first)
        while True:
            time.sleep(rng.uniform(*gap))
            if self.elapsed() >= until:
                return
            target = first.pop(0) if first else rng.choice(targets)
            kill = self.kill_one(target, rng.uniform(0.2, MAX_DOWN))
            kill.recovery = self.wait_connected()
            report.kills.append(kill)

    # -- runs ------------------------------------------------------------------------------

    def call(self, report: Report, what: str, fn: Callable[[grpc.Channel], Any]) -> Any:
        """`fn(channel)`, retried while the control plane is down or restarting."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.channel() as ch:
                    return fn(ch)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                    raise
                report.retries[what] += 1
                time.sleep(0.3)

    def find(self, ch: grpc.Channel, plan: Plan) -> int:
        """The id of the run created for `plan`, or 0 (found by its tags)."""
        listed = rgrpc.RunServiceStub(ch).ListRuns(
            rpb.ListRunsRequest(tags={"chaos": self.tag, "chaos-index": str(plan.index)}),
            timeout=10,
        )
        ids = [r.id for r in listed.runs]
        assert len(ids) <= 1, f"run #{plan.index} was created {len(ids)} times: {ids}"
        return ids[0] if ids else 0

    def submit(self, report: Report, plan: Plan) -> None:
        """Create the run exactly once, whatever happens to the control plane meanwhile."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.channel() as ch:
                    existing = self.find(ch, plan)
                    if existing:
                        plan.run_id = existing
                    else:
                        plan.run_id = (
                            rgrpc.RunServiceStub(ch)
                            .CreateRun(rpb.CreateRunRequest(run=plan.run(self.tag)), timeout=10)
                            .run.id
                        )
                    plan.created = self.elapsed()
                    return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                    raise
                report.retries["CreateRun"] += 1
                time.sleep(0.3)

    def cancel(self, report: Report, plan: Plan) -> None:
        def do(ch: grpc.Channel) -> None:
            stub = rgrpc.RunServiceStub(ch)
            try:
                stub.CancelRun(rpb.CancelRunRequest(run_id=plan.run_id), timeout=10)
            except grpc.RpcError as exc:
                # A cancel whose answer was lost, then retried: already Canceled.
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                    raise
                run = stub.GetRun(rpb.GetRunRequest(run_id=plan.run_id), timeout=10).run
                assert STATUS[run.status] == "Canceled", (plan, run.status, run.status_reason)

        self.call(report, "CancelRun", do)

    def client(self, report: Report, plans: list[Plan]) -> None:
        """Submit every run at its time and cancel those that are to be canceled."""
        todo: list[tuple[float, str, Plan]] = [(p.submit_at, "submit", p) for p in plans]
        while todo:
            todo.sort(key=lambda t: t[0])
            when, action, plan = todo.pop(0)
            pause = when - self.elapsed()
            if pause > 0:
                time.sleep(pause)
            if action == "submit":
                self.submit(report, plan)
                if plan.cancel_after is not None:
                    todo.append((self.elapsed() + plan.cancel_after, "cancel", plan))
            else:
                self.cancel(report, plan)

    def wait_terminal(self, report: Report, plans: list[Plan], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:

            def listed(ch: grpc.Channel) -> list[rpb.Run]:
                runs, token = [], ""
                while True:
                    page = rgrpc.RunServiceStub(ch).ListRuns(
                        rpb.ListRunsRequest(tags={"chaos": self.tag}, page_token=token),
                        timeout=10,
                    )
                    runs += page.runs
                    token = page.next_page_token
                    if not token:
                        return runs

            runs = {r.id: r for r in self.call(report, "ListRuns", listed)}
            for plan in plans:
                run = runs.get(plan.run_id)
                if run is not None:
                    report.outcomes[plan.index] = (STATUS.get(run.status, "?"), run.status_reason)
                    report.names[plan.index] = [
                        r.container_name for r in run.replicas if r.node_name
                    ]
                    if run.HasField("finished_at"):
                        report.run_seconds[plan.index] = (
                            run.finished_at.ToDatetime() - run.created_at.ToDatetime()
                        ).total_seconds()
            if all(report.outcomes.get(p.index, ("",))[0] in TERMINAL for p in plans):
                return
            if time.monotonic() > deadline:
                return  # the assertions name what is not terminal
            time.sleep(0.5)

    def containers(self) -> list[dict[str, Any]]:
        found = []
        for node in self.nodes:
            out = podman("ps", "-a", "--format", "json", "--filter", f"label=muster.node={node}")
            found += json.loads(out.stdout or "[]")
        return found

    def wait_no_containers(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = [f"{c['Names'][0]} ({c['State']})" for c in self.containers()]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def create_events(self) -> Counter[str]:
        """How many containers of each name this cluster's nodes created, told
        apart by container id, since the start: Podman `create` events (what the
        event stream delivered while the cluster ran, and what the event log
        still holds), and the ids `ContainerWatch` saw. All of them, because
        Podman 4.3 keeps its event log file under 1 MB by dropping its older half
        (other users of this Podman write to it too), its event stream then
        repeats some events and misses others, and one `podman events` with
        `--until` answers nothing at all."""
        assert self._events is not None and self._watch is not None
        time.sleep(0.5)  # let the stream deliver the last events
        self._events.stop()
        self._watch.stop()
        out = podman(*EVENT_ARGS, "--since", self._since(), "--stream=false").stdout
        ids: dict[str, set[str]] = {}
        for line in [*self._events.lines, *out.splitlines()]:
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("Attributes", {}).get("muster.node") in set(self.nodes):
                ids.setdefault(event["Name"], set()).add(event["ID"])
        self.sources = {"events": len(ids), "API listing": len(self._watch.ids)}
        for name, seen in self._watch.ids.items():
            ids.setdefault(name, set()).update(seen)
        return Counter({name: len(found) for name, found in ids.items()})

    def _since(self) -> str:
        return self.wall_start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    # -- the whole thing -------------------------------------------------------------------

    def run(self, runs: int, submit_window: float, chaos_window: float, settle: float) -> Report:
        """Submit `runs` runs over `submit_window` s while killing for `chaos_window` s,
        then wait up to `settle` s for every run to end and its containers to go."""
        plans = make_plans(self.rng, runs, submit_window)
        report = Report(self.seed, plans)
        report.durations["cluster up"] = self.elapsed()
        self.started = time.monotonic()  # the plan's times count from here
        failures: list[BaseException] = []

        def guarded(fn: Callable[[], None]) -> Callable[[], None]:
            def wrapper() -> None:
                try:
                    fn()
                except BaseException as exc:
                    failures.append(exc)

            return wrapper

        client = threading.Thread(target=guarded(lambda: self.client(report, plans)))
        driver = threading.Thread(target=guarded(lambda: self.drive(chaos_window, report)))
        client.start()
        driver.start()
        client.join()
        driver.join()
        if failures:
            raise failures[0]
        report.durations["chaos"] = self.elapsed()
        begun = time.monotonic()
        self.wait_terminal(report, plans, settle)
        report.durations["settle"] = time.monotonic() - begun
        begun = time.monotonic()
        report.leftovers = self.wait_no_containers(60)
        report.durations["teardown"] = time.monotonic() - begun
        report.creates = self.create_events()
        report.sources = self.sources
        return report


def seed_from_env() -> int:
    return int(os.environ.get("MUSTER_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
