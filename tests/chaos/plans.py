"""The chaos runs: what each one does and how it must end (its plan), the
seeded mix of plans, and the report of what happened to them."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass, field

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import run_pb2 as rpb
from tests.e2e.conftest import BUSYBOX

POOL = "chaos"
KINDS = ("ok", "fail", "workers-ok", "workers-fail", "cancel")
STATUS = {
    rpb.RUN_STATUS_PENDING: "Pending",
    rpb.RUN_STATUS_RUNNING: "Running",
    rpb.RUN_STATUS_SUCCEEDED: "Succeeded",
    rpb.RUN_STATUS_FAILED: "Failed",
    rpb.RUN_STATUS_CANCELED: "Canceled",
}
TERMINAL = {"Succeeded", "Failed", "Canceled"}

# The job asks every worker for its page over HTTP with nc, after looking its
# name up in /etc/hosts by hand: busybox-static's wget segfaults on a network
# with DNS (static glibc NSS), even for an IP address.
JOB_SCRIPT = (
    'for a in $(echo "$TYGER_HTTP_WORKER_ENDPOINT_ADDRESSES" | tr -d \'[]"\' | tr , " "); do '
    'h="${a%:*}"; ip=$(awk -v h="$h" \'{for (i = 2; i <= NF; i++) if ($i == h) '
    "{print $1; exit}}' /etc/hosts); "
    'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "${ip:-$h}" "${a##*:}" | grep -q "^worker" '
    "|| exit 97; done; "
    "sleep $CHAOS_SLEEP; exit $CHAOS_EXIT"
)
WORKER_SCRIPT = (
    'mkdir -p /www && echo "worker $TYGER_WORKER_INDEX" > /www/index.html && '
    "exec httpd -f -p 8080 -h /www"
)


@dataclass
class Plan:
    """One run: what it does and how it must end."""

    index: int
    kind: str
    submit_at: float  # seconds after the start
    sleep: float = 0.0
    exit_code: int = 0
    workers: int = 0
    cancel_after: float | None = None  # seconds after its creation
    run_id: int = 0
    created: float = 0.0  # seconds after the start

    @property
    def expected(self) -> tuple[str, str]:
        if self.kind == "cancel":
            return "Canceled", "canceled by user"
        if self.exit_code:
            return "Failed", f"job exited with code {self.exit_code}"
        return "Succeeded", ""

    def run(self, tag: str) -> rpb.Run:
        job = cpb.Codespec(
            name="chaos-job",
            image=BUSYBOX,
            command=["sh", "-c", JOB_SCRIPT],
            env={"CHAOS_SLEEP": f"{self.sleep:.1f}", "CHAOS_EXIT": str(self.exit_code)},
        )
        message = rpb.Run(
            job=rpb.RunCodeTarget(codespec=rpb.CodespecRef(inline=job), node_pool=POOL),
            tags={"chaos": tag, "chaos-index": str(self.index)},
            timeout_seconds=900,
        )
        if self.workers:
            worker = cpb.Codespec(
                name="chaos-worker",
                kind=cpb.CODESPEC_KIND_WORKER,
                image=BUSYBOX,
                command=["sh", "-c", WORKER_SCRIPT],
                endpoints={"http": 8080},
            )
            message.worker.CopyFrom(
                rpb.RunCodeTarget(
                    codespec=rpb.CodespecRef(inline=worker),
                    node_pool=POOL,
                    replicas=self.workers,
                )
            )
        return message


def make_plans(rng: random.Random, runs: int, submit_window: float) -> list[Plan]:
    """`runs` runs, every kind at least runs // 5 times, in a seeded random order."""
    kinds = [KINDS[i % len(KINDS)] for i in range(runs)]
    rng.shuffle(kinds)
    plans = []
    for i, kind in enumerate(kinds):
        plan = Plan(i, kind, submit_at=rng.uniform(0, submit_window))
        plan.sleep = rng.uniform(0.5, 8.0)
        plan.workers = 2 if kind.startswith("workers") or (kind == "cancel" and i % 2) else 0
        if kind.endswith("fail"):
            plan.exit_code = rng.choice([1, 2, 3, 42, 125])
        if kind == "cancel":
            plan.sleep = 600
            plan.cancel_after = rng.uniform(0.0, 12.0)
        plans.append(plan)
    return sorted(plans, key=lambda p: p.submit_at)


@dataclass
class Kill:
    """One SIGKILL and restart."""

    at: float  # seconds after the start
    target: str
    down: float  # seconds between the kill and the restart
    recovery: float = 0.0  # seconds from the restart until every agent was connected again


@dataclass
class Report:
    """What happened, for the test's assertions and the benchmark's figures."""

    seed: int
    plans: list[Plan]
    kills: list[Kill] = field(default_factory=list)
    outcomes: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> status, reason
    creates: Counter[str] = field(default_factory=Counter)  # name -> containers created
    leftovers: list[str] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)
    durations: dict[str, float] = field(default_factory=dict)
    run_seconds: dict[int, float] = field(default_factory=dict)  # index -> created..finished
    names: dict[int, list[str]] = field(default_factory=dict)  # index -> its containers' names
    sources: dict[str, int] = field(default_factory=dict)  # containers seen, by source

    def mismatches(self) -> list[str]:
        out = []
        for plan in self.plans:
            got = self.outcomes.get(plan.index)
            if got != plan.expected:
                out.append(
                    f"run {plan.run_id} (#{plan.index}, {plan.kind}, workers={plan.workers}, "
                    f"exit={plan.exit_code}): expected {plan.expected}, got {got}"
                )
        return out

    def unseen(self) -> list[str]:
        """Containers that must have been made (every replica of every run that was
        not canceled) but of which no creation was seen."""
        out = []
        for plan in self.plans:
            names = self.names.get(plan.index, [])
            if plan.kind != "cancel" and len(names) != 1 + plan.workers:
                out.append(f"run {plan.run_id}: containers {names}")
            if plan.kind != "cancel":
                out += [name for name in names if name not in self.creates]
        return out

    def duplicates(self) -> dict[str, int]:
        return {name: n for name, n in self.creates.items() if n != 1}

    def hit(self) -> list[Plan]:
        """Runs that were under way (created, not finished) during at least one kill."""
        out = []
        for plan in self.plans:
            seconds = self.run_seconds.get(plan.index)
            end = plan.created + seconds if seconds is not None else float("inf")
            if any(plan.created <= k.at + k.down and k.at <= end for k in self.kills):
                out.append(plan)
        return out

    def recovery(self, cp: bool) -> str:
        times = sorted(k.recovery for k in self.kills if (k.target == "cp") == cp)
        if not times:
            return "none"
        return f"median {statistics.median(times):.1f} s, max {times[-1]:.1f} s"

    def summary(self) -> str:
        lines = [
            f"chaos seed {self.seed} (MUSTER_CHAOS_SEED={self.seed} reproduces the plan): "
            f"{len(self.plans)} runs "
            f"({', '.join(f'{k} {n}' for k, n in Counter(p.kind for p in self.plans).items())}), "
            f"{len(self.kills)} kills "
            f"({', '.join(f'{k} {n}' for k, n in Counter(k.target for k in self.kills).items())})",
            "kills: " + ", ".join(f"{k.target}@{k.at:.1f}s/{k.down:.1f}s down" for k in self.kills),
            f"containers created: {len(self.creates)} "
            f"(each once: {not self.duplicates()}; seen in "
            + ", ".join(f"{k} {v}" for k, v in self.sources.items())
            + "); outcomes: "
            + ", ".join(
                f"{s} {n}" for s, n in Counter(o[0] for o in self.outcomes.values()).items()
            ),
            f"runs under way during a kill: {len(self.hit())} of {len(self.plans)}; "
            f"every agent connected again after a control plane restart: {self.recovery(True)}, "
            f"after an agent restart: {self.recovery(False)}",
            "retried calls: " + (", ".join(f"{k} {n}" for k, n in self.retries.items()) or "none"),
            "phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.durations.items()),
        ]
        return "\n".join(lines)
