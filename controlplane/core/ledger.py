"""What active runs hold on each node, kept up to date run by run.

The scheduler, admission's "in use" figures and `node list` need, per node,
the requests reserved, the replicas placed and the GPU devices held. Summing
them over every active run on each question made a create or a scheduling
round cost a pass over the whole queue; the ledger instead records what each
run holds and adjusts the node totals when that run changes (placed, a
replica moved, ended), so a question costs nothing and a change costs only
its own replicas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from controlplane.core.capacity import Capacity
from controlplane.core.run_model import Run

Holding = tuple[tuple[str, Capacity, tuple[str, ...]], ...]
"""(node, request, GPU devices) for each placed replica of one run."""


def holding(run: Run) -> Holding:
    """What `run` holds: every placed replica's node, request and devices;
    nothing once it has ended."""
    if run.terminal:
        return ()
    held = []
    for r in run.replicas:
        if r.node:
            target = run.worker if r.role == "worker" else run.job
            request = target.request if target is not None else Capacity()
            held.append((r.node, request, tuple(r.gpu_devices)))
    return tuple(held)


class Ledger:
    """Per-node totals of what active runs hold, updated by `put`/`drop`."""

    def __init__(self) -> None:
        self._held: dict[int, Holding] = {}
        self._allocated: dict[str, Capacity] = {}
        self._counts: dict[str, int] = {}
        self._devices: dict[str, Counter[str]] = {}

    def put(self, run: Run) -> None:
        """`run` as it is now replaces what it held before (an ended run holds nothing)."""
        now = holding(run)
        before = self._held.get(run.id, ())
        if now == before:
            return
        self._apply(before, -1)
        self._apply(now, +1)
        if now:
            self._held[run.id] = now
        else:
            self._held.pop(run.id, None)

    def drop(self, run_id: int) -> None:
        """The run no longer holds anything."""
        self._apply(self._held.pop(run_id, ()), -1)

    def reset(self, runs: Iterable[Run]) -> None:
        """Start again from these runs (a load)."""
        for table in (self._held, self._allocated, self._counts, self._devices):
            table.clear()
        for run in runs:
            self.put(run)

    def _apply(self, held: Holding, sign: int) -> None:
        for node, request, devices in held:
            total = self._allocated.get(node, Capacity())
            total = total + request if sign > 0 else total - request
            count = self._counts.get(node, 0) + sign
            if count:
                self._allocated[node], self._counts[node] = total, count
            else:  # exact: nothing left on the node
                self._allocated.pop(node, None)
                self._counts.pop(node, None)
            if devices:
                used = self._devices.setdefault(node, Counter())
                used.update({d: sign for d in devices})
                for d in devices:
                    if used[d] <= 0:
                        del used[d]
                if not used:
                    del self._devices[node]

    def allocated(self) -> dict[str, Capacity]:
        """Requests reserved per node (a node with nothing placed is absent)."""
        return self._allocated

    def counts(self) -> dict[str, int]:
        """Replicas placed per node."""
        return self._counts

    def devices_in_use(self) -> dict[str, set[str]]:
        """GPU devices held per node."""
        return {node: set(used) for node, used in self._devices.items()}
