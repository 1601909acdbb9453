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

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from controlplane.core import runs as lifecycle
from controlplane.core.runs import Action, Run

T = TypeVar("T")


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


class Coalescer(Generic[T]):
    """Hands every item submitted while `handle` is busy to its next call, as
    one list; each submitter waits until the call holding its item returns
    (or gets the exception it raised). One call runs at a time, so items are
    handled in the order they were submitted."""

    def __init__(self, handle: Callable[[list[T]], Awaitable[None]]) -> None:
        self._handle = handle
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, *items: T) -> None:
        """Queue `items` (in order, all in the same call) and wait until they
        have been handled."""
        if not items:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.extend((item, done) for item in items)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._queue:
            taken, self._queue = self._queue, []
            try:
                await self._handle([item for item, _ in taken])
            except BaseException as exc:  # every submitter of this batch hears of it
                for _, done in taken:
                    if done.done():
                        continue
                    if isinstance(exc, Exception):
                        done.set_exception(exc)
                    else:
                        done.cancel()
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)
