"""A bounded cache of decoded finished runs, for the SQL backends."""

from __future__ import annotations

import json
from collections import OrderedDict

from controlplane.core.runs import Run
from controlplane.store.documents import run_from_doc

RECENT_RUNS = 2_000
"""Finished runs kept decoded, the most recently read first: enough for the
newest pages of lists and watches. Not more: every cached run is a few hundred
Python objects that each full garbage collection walks (20,000 of them put
GetRun's p99 at 500 calls/s at 47-59 ms instead of 2-9 ms; bench_api.py)."""


class RecentRuns:
    """Finished runs are read far more often than they change (lists, watches,
    `run show`), so the decoded form of recently read ones is kept, keyed by
    the document's exact text: any change to the row (tags, retention) is a
    different text. Callers never change a run they read (the orchestrator
    works on copies). Not thread-safe: SQLite uses it on its store thread
    only, PostgreSQL on the event loop."""

    def __init__(self, size: int = RECENT_RUNS) -> None:
        self._size = size
        self._runs: OrderedDict[int, tuple[str, Run]] = OrderedDict()

    def decoded(self, run_id: int, doc: str) -> Run:
        """The run a stored document holds."""
        cached = self._runs.get(run_id)
        if cached is not None and cached[0] == doc:
            self._runs.move_to_end(run_id)
            return cached[1]
        run = run_from_doc(json.loads(doc))
        if run.terminal:
            self._runs[run_id] = (doc, run)
            if len(self._runs) > self._size:
                self._runs.popitem(last=False)
        return run
