"""Group commit: many run changes decided in memory, persisted in one store
transaction, and only then acted on.

A busy control plane hears from hundreds of agents at once; committing each
container report on its own costs a transaction, an fsync and a thread hop
per report, one after another behind the orchestrator's lock. Instead,
changes are decided one after another on copies (`RunBatch`), exactly as
they would be one at a time, and the whole batch is written at once; callers
that arrive while a batch is being written wait for the next one
(`Coalescer`), so the batch grows with the load and a quiet control plane
still answers at once. Persisting before acting holds for every change in
the batch: nothing is sent before the transaction that holds it commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from controlplane.core import runs as lifecycle
from controlplane.core.runs import Action, Run


@dataclass
class Change:
    """One run's change within a batch: the run it started from, what it is
    now, and the actions to send once it is stored, in decision order."""

    before: Run
    after: Run
    actions: list[Action] = field(default_factory=list)

    @property
    def observed_only(self) -> bool:
        """Whether only what agents observe changed (replica states, their
        events): no action follows and the run's status, reason, instants and
        placement stand. Such a change may be stored a moment later: were it
        lost in a crash, the agents report those states again when they
        reconnect, and nothing was decided on it."""
        b, a = self.before, self.after
        return (
            not self.actions
            and a.status == b.status
            and a.status_reason == b.status_reason
            and a.started_at == b.started_at
            and a.finished_at == b.finished_at
            and a.placed_at == b.placed_at
            and a.generation == b.generation
        )


class RunBatch:
    """Decisions on copies of runs; each decision sees the ones before it."""

    def __init__(self) -> None:
        self._changes: dict[int, Change] = {}

    def change(self, run: Run, decide: Callable[[Run], list[Action]], always: bool = False) -> Run:
        """Let `decide` change a copy of `run` (or of the run as this batch
        already changed it) and keep the copy when there are actions, when the
        run ends, or `always`. Returns the run as it now stands in the batch."""
        entry = self._changes.get(run.id)
        current = entry.after if entry is not None else run
        draft = lifecycle.clone(current)
        actions = decide(draft)
        if not (actions or (draft.terminal and not current.terminal) or always):
            return current
        if entry is None:
            self._changes[run.id] = Change(run, draft, actions)
        else:
            entry.after = draft
            entry.actions += actions
        return draft

    def __iter__(self) -> Iterator[Change]:
        return iter(list(self._changes.values()))

    def __len__(self) -> int:
        return len(self._changes)
