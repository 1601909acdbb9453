"""The run state machine. Pure: it mutates a Run and returns the actions the
caller must carry out (start a container on a node, tear a run down on a node);
it never performs I/O. The service layer persists the run *before* acting.
The run itself (and its actions) is defined in `run_model`, the instants its
deadlines count from in `run_deadlines`; both are re-exported here.

Lifecycle (docs/contract.md §2): Pending (placing, then waiting for worker readiness) ->
Running (job released) -> Succeeded | Failed | Canceled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.core.run_deadlines import Elapsed as Elapsed
from controlplane.core.run_deadlines import anchor_of as anchor_of
from controlplane.core.run_deadlines import anchors as anchors
from controlplane.core.run_deadlines import readiness_clock as readiness_clock
from controlplane.core.run_model import DEFAULT_TIMEOUT_SECONDS as DEFAULT_TIMEOUT_SECONDS
from controlplane.core.run_model import TERMINAL as TERMINAL
from controlplane.core.run_model import Action as Action
from controlplane.core.run_model import ContainerState as ContainerState
from controlplane.core.run_model import Event as Event
from controlplane.core.run_model import Replica as Replica
from controlplane.core.run_model import Role as Role
from controlplane.core.run_model import Run as Run
from controlplane.core.run_model import StartReplica as StartReplica
from controlplane.core.run_model import Status as Status
from controlplane.core.run_model import Target as Target
from controlplane.core.run_model import Teardown as Teardown
from controlplane.core.run_model import clone as clone
from controlplane.core.run_model import container_name as container_name
from controlplane.core.run_model import hostname as hostname
from controlplane.core.run_model import new_run as new_run


def _add_event(run: Run, now: datetime, message: str) -> None:
    """Append an entry to the run's history (its events, not a log)."""
    run.events.append(Event(now, message))


def _finish(run: Run, now: datetime, status: Status, reason: str) -> list[Action]:
    """Enter a terminal status and tear down on every node that holds a replica."""
    if run.terminal:
        return []
    run.status = status
    run.status_reason = reason
    run.finished_at = now
    _add_event(run, now, f"run {status.lower()}: {reason}" if reason else f"run {status.lower()}")
    return [Teardown(node, run.id) for node in run.nodes()]


def waiting(run: Run, reason: str) -> None:
    """Record what an unplaced run waits for (no event: it repeats every tick)."""
    if not run.terminal and not run.placed:
        run.status_reason = reason


def place(
    run: Run,
    assignment: dict[tuple[str, int], str],
    now: datetime,
    generation: int = 1,
    gpu_devices: Mapping[tuple[str, int], tuple[str, ...]] | None = None,
) -> list[Action]:
    """Record a gang placement under `generation` (unique per placement), with
    the GPU devices each replica holds; start the workers (or the job when
    there are none)."""
    assert not run.terminal and not run.placed
    run.generation = generation
    for r in run.replicas:
        r.node = assignment[(r.role, r.index)]
        r.gpu_devices = tuple((gpu_devices or {}).get((r.role, r.index), ()))
        gpus = f" with GPU {', '.join(r.gpu_devices)}" if r.gpu_devices else ""
        gpus = gpus.replace("GPU", "GPUs", 1) if len(r.gpu_devices) > 1 else gpus
        _add_event(run, now, f"{r.label} scheduled on {r.node}{gpus}")
    run.placed_at = now
    if run.workers:
        run.status_reason = f"waiting for workers to be ready: 0 of {len(run.workers)} ready"
        # Every replica was just placed: r.node is set.
        return [StartReplica(r.node, run.id, "worker", r.index) for r in run.workers]  # type: ignore[arg-type]
    return _release(run, now)


def _release(run: Run, now: datetime) -> list[Action]:
    run.started_at = now
    run.status = "Running"
    run.status_reason = ""
    _add_event(run, now, "job released")
    # Released replicas are placed: r.node is set.
    return [StartReplica(r.node, run.id, "job", r.index) for r in run.jobs]  # type: ignore[arg-type]


def pending_starts(run: Run, node: str) -> list[Action]:
    """Starts to (re)send to `node`: replicas placed there that are not started yet.

    Used when an agent (re)connects, so that a crash between persisting a
    placement and telling the agent loses nothing.
    """
    if run.terminal:
        return []
    out: list[Action] = []
    for r in run.replicas:
        if r.node == node and r.state in ("pending", "pulling", "creating"):
            if r.role == "worker" or run.released:
                out.append(StartReplica(node, run.id, r.role, r.index))
    return out


@dataclass(frozen=True)
class Observation:
    """What an agent reported about one container."""

    role: Role
    index: int
    state: ContainerState
    ready: bool = False
    exit_code: int | None = None
    message: str = ""
    addresses: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    """0: the container carries no generation (started before generations existed)."""
    host_ip: str = ""
    image_digest: str = ""
    pull_bytes_done: int = 0
    pull_bytes_total: int = 0
    buffer_error: str = ""
    """A job with buffers: why a copy between a pipe and its buffer failed
    (reported with EXITED, once every copy ended); "" when all succeeded."""


def observe(run: Run, node: str, obs: Observation, now: datetime) -> list[Action]:
    """Apply an agent's container report and decide what follows."""
    r = run.replica(obs.role, obs.index)
    if r is None or r.node != node:
        return [Teardown(node, run.id)] if run.terminal else []
    if obs.generation and obs.generation != run.generation:
        return []  # a stale placement's container: never overrides this one
    if run.terminal:
        r.state, r.exit_code = (
            obs.state,
            obs.exit_code if obs.exit_code is not None else r.exit_code,
        )
        return []
    was_ready, old_state = r.ready, r.state
    r.state, r.ready, r.message = obs.state, obs.ready, obs.message
    if obs.exit_code is not None:
        r.exit_code = obs.exit_code
    if obs.addresses:
        r.addresses = dict(obs.addresses)
    if obs.host_ip:
        r.host_ip = obs.host_ip
    _observe_image(run, r, obs, old_state, now)
    if r.state != old_state and r.state == "running":
        _add_event(run, now, f"{r.label} running on {node}")
    if r.role == "worker":
        return _observe_worker(run, r, was_ready, now)
    return _observe_job(run, r, now, obs.buffer_error)


def _image_of(run: Run, r: Replica) -> str:
    target = run.worker if r.role == "worker" else run.job
    return target.codespec.image if target is not None else ""


def _observe_image(
    run: Run, r: Replica, obs: Observation, old_state: ContainerState, now: datetime
) -> None:
    """Pull progress, the image digest and the start of the readiness clock."""
    if obs.image_digest:
        r.image_digest = obs.image_digest
    if r.state == "pulling":
        r.pull_bytes_done, r.pull_bytes_total = obs.pull_bytes_done, obs.pull_bytes_total
        if old_state != "pulling":
            _add_event(run, now, f"{r.label} pulling image {_image_of(run, r)} on {r.node}")
        return
    r.pull_bytes_done = r.pull_bytes_total = 0
    if old_state == "pulling" and r.state in ("creating", "running"):
        digest = f" ({r.image_digest})" if r.image_digest else ""
        _add_event(run, now, f"{r.label} pulled image {_image_of(run, r)} on {r.node}{digest}")
    if r.started_at is None and r.state in ("creating", "running"):
        r.started_at = now


def _observe_worker(run: Run, r: Replica, was_ready: bool, now: datetime) -> list[Action]:
    if r.state == "failed":
        return _finish(
            run, now, "Failed", f"worker {r.index} failed to start on {r.node}: {r.message}"
        )
    if r.state in ("exited", "removed"):
        code = f"with code {r.exit_code}" if r.exit_code is not None else "unexpectedly"
        if r.state == "exited" and run.worker is not None and run.worker.restart:
            r.ready = False
            _add_event(
                run, now, f"worker {r.index} exited {code}; restarting it (restartPolicy Always)"
            )
            return []
        return _finish(run, now, "Failed", f"worker {r.index} exited {code}")
    if r.ready and not was_ready:
        _add_event(run, now, f"worker {r.index} ready")
    ready = sum(1 for w in run.workers if w.ready)
    if not run.released:
        if ready == len(run.workers):
            return _release(run, now)
        run.status_reason = f"waiting for workers to be ready: {ready} of {len(run.workers)} ready"
    return []


def _observe_job(run: Run, r: Replica, now: datetime, buffer_error: str = "") -> list[Action]:
    """A job's report decides the outcome: it succeeds only when every job
    replica exited 0 and, with buffers, every copy of its pipes succeeded."""
    name = "job" if len(run.jobs) == 1 else f"job {r.index}"
    if r.state == "failed":
        return _finish(run, now, "Failed", f"{name} failed to start on {r.node}: {r.message}")
    if r.state == "removed" and r.exit_code is None:
        return _finish(run, now, "Failed", f"{name} container disappeared from {r.node}")
    if r.state in ("exited", "removed"):
        if r.exit_code != 0:
            copies = f" ({buffer_error})" if buffer_error else ""
            return _finish(run, now, "Failed", f"{name} exited with code {r.exit_code}{copies}")
        if buffer_error:  # the job did its part, but its data did not get through
            return _finish(
                run, now, "Failed", f"{name} exited with code 0 but a buffer failed: {buffer_error}"
            )
        _add_event(run, now, f"{name} exited with code 0")
        if all(j.state in ("exited", "removed") and j.exit_code == 0 for j in run.jobs):
            return _finish(run, now, "Succeeded", "")
    return []


def fail(run: Run, now: datetime, reason: str) -> list[Action]:
    """Fail the run for a reason found outside the state machine (e.g. a start
    that could not even be sent)."""
    return _finish(run, now, "Failed", reason)


def cancel(run: Run, now: datetime) -> list[Action]:
    """User cancel: Canceled at once, then teardown."""
    return _finish(run, now, "Canceled", "canceled by user")


def node_lost(run: Run, node: str, now: datetime, how: str = "was lost") -> list[Action]:
    """A node holding replicas of the run stopped heartbeating for too long
    (or, with `how` = "was removed", an admin removed it)."""
    on_node = [r.label for r in run.replicas if r.node == node]
    if run.terminal or not on_node:
        return []
    return _finish(run, now, "Failed", f"node {node} {how} ({', '.join(on_node)} placed there)")


def drain_deadline_passed(run: Run, node: str, now: datetime) -> list[Action]:
    """A drain of `node` reached its deadline with replicas of the run still
    there: Canceled (an admin's decision, like a cancel, not the run's fault)."""
    on_node = [r.label for r in run.replicas if r.node == node]
    if run.terminal or not on_node:
        return []
    return _finish(
        run,
        now,
        "Canceled",
        f"node {node} was drained (deadline passed; {', '.join(on_node)} placed there)",
    )


def missing_container(run: Run, node: str, role: str, index: int, now: datetime) -> list[Action]:
    """An agent re-registered without a container that had been running."""
    r = run.replica(role, index)
    if run.terminal or r is None or r.node != node or r.state not in ("running",):
        return []
    return observe(run, node, Observation(r.role, r.index, "removed"), now)


ON_NODE: tuple[ContainerState, ...] = ("pulling", "creating", "running", "exited")
"""Replica states whose container is (as far as was last heard) still on its node."""


def has_containers_on(run: Run, node: str) -> bool:
    """Whether a replica of `run` on `node` was last heard of with its container there."""
    return any(r.node == node and r.state in ON_NODE for r in run.replicas)


def containers_gone(run: Run, node: str, now: datetime) -> list[Action]:
    """A finished run's agent re-registered without any of its containers
    (they were removed while the node was cut off, or by its self-fencing):
    record that its replicas there are gone, as a removal would have."""
    if not run.terminal:
        return []
    for r in run.replicas:
        if r.node == node and r.state in ON_NODE:
            r.state = "removed"
            _add_event(run, now, f"{r.label} was gone when {node} registered again")
    return []


def check_deadlines(
    run: Run, now: datetime, readiness_timeout: timedelta, elapsed: Elapsed | None = None
) -> list[Action]:
    """Run timeout (from creation) and worker readiness timeout (from each
    worker's container start, see `readiness_clock`). `elapsed` measures
    time since an anchor: the orchestrator's is monotonic, so a wall clock
    that jumps fails nothing early or late; by default it is `now` minus the
    stored wall-clock instant. `now` only stamps the events."""
    if run.terminal:
        return []
    stamps = anchors(run)
    since_anchor = elapsed or (lambda name: now - stamps[name])
    if since_anchor("created") >= timedelta(seconds=run.timeout_seconds):
        return _finish(
            run, now, "Failed", f"the run timed out after {run.timeout_seconds}s (timeoutSeconds)"
        )
    for w in run.workers:
        anchor = anchor_of(run, w)
        if anchor is not None and since_anchor(anchor) >= readiness_timeout:
            detail = w.message or f"container is {w.state}"
            started = "its start" if w.started_at else "placement"
            return _finish(
                run,
                now,
                "Failed",
                f"worker {w.index} was not ready within {int(readiness_timeout.total_seconds())}s "
                f"of {started}: {detail}",
            )
    return []
