"""The store interface. Services depend on this, never on a backend, so that a
PostgreSQL implementation can follow without touching them; the contract test
suites in tests/controlplane/test_store_contract_*.py run against every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from controlplane.core.auth import ApiToken, JoinToken
from controlplane.core.buffers import Buffer, BufferFilter
from controlplane.core.codespec import Codespec
from controlplane.core.images import StoredLogin
from controlplane.core.logs import LogLine, StoredLine
from controlplane.core.nodes import Node
from controlplane.core.runs import Run

CodespecOrder = Literal["newest", "name"]
BufferChange = Callable[[str, Buffer | None], Buffer | None]
"""(id, the record or None) -> the record to store, or None to leave it; may raise."""


class StoreInUse(OSError):
    """Another control plane holds the database (SQLite: its lock file)."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer muster than this one."""


def refuse_newer_schema(current: int, known: int) -> None:
    """SchemaTooNew when the database is at a version past the `known` migrations."""
    if current > known:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this control plane "
            f"({known}); upgrade muster"
        )


@dataclass(frozen=True)
class KnownRequest:
    """A CreateRun request id seen before: the run it made and what was asked."""

    run_id: int
    fingerprint: str  # "" when recorded before fingerprints were kept


@dataclass(frozen=True)
class Lease:
    """Who leads the control planes sharing this database, as the database says.

    `epoch` grows by one with each new leader and is never reused; it fences
    a deposed leader (agents and the store refuse its older epoch).
    `seconds_left` is measured on the database's clock, the one clock every
    control plane shares (0 or less: expired, anyone may take it)."""

    holder: str
    epoch: int
    api_address: str = ""
    agent_address: str = ""
    seconds_left: float = 0.0


@dataclass(frozen=True)
class CodespecPage:
    """One page of codespecs plus the cursor after its last item (None at the end)."""

    items: list[Codespec]
    next_cursor: tuple[int, str] | None


class Store(Protocol):
    """Every method is one transaction; all are safe to call from the event loop."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def latest_codespec(self, name: str) -> Codespec | None:
        """The highest version of `name`, or None if the name is unknown."""

    async def get_codespec(self, name: str, version: int) -> Codespec | None:
        """One exact version, or None."""

    async def insert_codespec(self, spec: Codespec) -> Codespec:
        """Store `spec` as exactly `spec.version`.

        Raises Conflict if that version exists already (a concurrent writer won),
        so that callers can re-read and retry without ever leaving a gap.
        """

    async def list_codespecs(
        self,
        *,
        prefix: str,
        order: CodespecOrder,
        limit: int,
        after: tuple[int, str] | None,
    ) -> CodespecPage:
        """Latest version of each name; `after` is the previous page's cursor."""

    async def insert_run(self, run: Run, request_id: str = "", fingerprint: str = "") -> Run:
        """Store a new run; assigns and returns it with its id (ids only grow).
        With a `request_id`, remember in the same transaction that the request
        (whose content hashes to `fingerprint`) created this run (replacing an
        older record of the same id)."""

    async def run_for_request(self, request_id: str, since: datetime) -> KnownRequest | None:
        """What `request_id` created at or after `since`, if that run still exists."""

    async def forget_requests(self, before: datetime, limit: int) -> int:
        """Drop up to `limit` request records made before `before`; returns how many."""

    async def save_run(self, run: Run) -> None:
        """Replace the stored state of an existing run."""

    async def save_runs(self, runs: Sequence[Run]) -> None:
        """Replace the stored state of several existing runs in one
        transaction: all or none (KeyError naming a missing run, and nothing
        written). The orchestrator commits what one round decided this way,
        so a busy control plane pays one commit for many changes."""

    async def get_run(self, run_id: int) -> Run | None:
        """One run, or None."""

    async def list_runs(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[Run], bool]:
        """Runs newest first (by id), filtered; returns (page, whether more follow)."""

    async def count_runs(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        """Number of runs per status, filtered."""

    async def active_runs(self) -> list[Run]:
        """Every run that has not reached a terminal status, oldest first."""

    async def cluster_id(self) -> str:
        """This database's cluster id: 32 random hex digits, made once, never changed."""

    async def save_node(self, node: Node) -> None:
        """Insert or replace a node record."""

    async def list_nodes(self) -> list[Node]:
        """Every known node, by name."""

    async def append_logs(self, lines: list[LogLine]) -> int:
        """Store lines of existing runs; a line already stored (same run, role,
        replica, stream, sequence) is ignored. Returns how many were new."""

    async def last_log_id(self, run_id: int) -> int:
        """The arrival id of the newest stored line of the run (0 if none)."""

    async def read_logs(
        self,
        run_id: int,
        *,
        since_ns: int | None,
        max_id: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[StoredLine]:
        """Lines in time order (arrival order breaks ties: container timestamps
        may be whole seconds), at or after `since_ns`, arrived no later than
        `max_id`, strictly after the key `after` = (time_ns, id)."""

    async def tail_logs(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> list[StoredLine]:
        """The last `count` lines in the same order as read_logs."""

    async def tail_start(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> tuple[int, int] | None:
        """The key (time_ns, id) of the first of the last `count` lines (as
        tail_logs selects them), or None when there is none."""

    async def new_logs(self, run_id: int, *, after_id: int, limit: int) -> list[StoredLine]:
        """Lines that arrived after `after_id`, in arrival order."""

    async def delete_node(self, name: str, now: datetime) -> None:
        """Forget a node and record when it was removed: certificates of that
        node issued no later than this are refused from then on."""

    async def node_removed_at(self, name: str) -> datetime | None:
        """When the node was last removed, or None."""

    async def insert_token(self, token: ApiToken) -> None:
        """Store a new bearer token; AlreadyExists if the name is taken."""

    async def list_tokens(self) -> list[ApiToken]:
        """Every bearer token, by name."""

    async def revoke_token(self, name: str, now: datetime) -> ApiToken | None:
        """Mark a token revoked (keeping an earlier revocation time); None if unknown."""

    async def insert_join_token(self, token: JoinToken) -> None:
        """Store a new join token."""

    async def use_join_token(self, hash: str, node: str, now: datetime) -> JoinToken | None:
        """Atomically spend a join token: it must exist, be unused and not
        expired at `now`. Returns it (with `used_by`), or None."""

    async def save_registry_login(self, login: StoredLogin) -> None:
        """Insert or replace the login for `login.registry` (its password sealed)."""

    async def list_registry_logins(self) -> list[StoredLogin]:
        """Every stored registry login, by registry."""

    async def delete_registry_login(self, registry: str) -> bool:
        """Forget a registry's login; False if there was none."""

    async def finished_before(self, before: datetime, limit: int) -> list[int]:
        """Ids of up to `limit` runs that finished before `before`, the oldest first."""

    async def delete_logs(self, run_id: int, limit: int) -> int:
        """Delete up to `limit` log lines of a run (retention does a big run in
        such chunks, each a short transaction); returns how many went."""

    async def delete_runs(self, run_ids: list[int]) -> int:
        """Delete runs with their tags, request ids and any log lines left, in
        one transaction; returns how many runs were deleted."""

    async def log_usage(self, run_id: int) -> tuple[int, int]:
        """(bytes of log text stored for the run, how many of its oldest lines were dropped)."""

    async def runs_over_log_cap(self, max_bytes: int, limit: int) -> list[int]:
        """Up to `limit` runs whose stored log text exceeds `max_bytes`, the largest first."""

    async def drop_oldest_logs(self, run_id: int, max_bytes: int, limit: int, marker: str) -> int:
        """Delete the run's oldest lines (time order, at most `limit`) until its
        log text fits in `max_bytes`, and keep one marker line before what is
        left: `marker` with `{dropped}` replaced by the number dropped in all.
        Returns how many lines this call dropped."""

    async def compact(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system; returns how many."""

    # -- leadership ----------------------------------------------------------

    async def acquire_lease(
        self, holder: str, api_address: str, agent_address: str, seconds: float
    ) -> Lease:
        """Renew the lease if `holder` has it, take it (with the next epoch) if
        it is free or expired, and return it as it now stands, whoever holds
        it. Backends with one control plane per database (SQLite, memory)
        give it to the first holder that asks, with an epoch one above the
        last start's, and keep it theirs."""

    async def release_lease(self, holder: str) -> None:
        """Let the lease expire now if `holder` has it (a clean stop): another
        control plane takes over at its next try instead of after the lease."""

    async def set_fence(self, epoch: int | None) -> None:
        """From now on, commit a write only while the lease of `epoch` is held
        and unexpired (None: no check); a fenced write raises StoreUnavailable.
        A no-op where there is one control plane per database."""

    # -- buffers -------------------------------------------------------------

    async def insert_buffer(self, buffer: Buffer) -> None:
        """Store a new buffer record with its tags; AlreadyExists if the id is taken."""

    async def get_buffer(self, buffer_id: str) -> Buffer | None:
        """One record as stored (expired or not), or None."""

    async def list_buffers(
        self, flt: BufferFilter, *, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Buffer], bool]:
        """Records `flt` selects that have not expired at `now`, newest first
        (creation time, then id, both descending), strictly after the cursor
        `after` = (created_at in microseconds, id); returns (page, whether more follow)."""

    async def count_buffers(self, flt: BufferFilter, *, now: datetime) -> int:
        """How many records list_buffers would list with the same filter and time."""

    async def change_buffers(self, ids: list[str], change: BufferChange) -> list[Buffer]:
        """In one transaction, store `change(id, record or None)` for each id in
        turn (None from change: left alone); an exception from `change` undoes
        them all and propagates. Returns the records stored, in order of `ids`."""

    async def change_matching(
        self, flt: BufferFilter, *, now: datetime, change: BufferChange
    ) -> list[Buffer]:
        """change_buffers over every record list_buffers would list, in one transaction."""

    async def expired_buffers(self, now: datetime, *, soft_deleted: bool, limit: int) -> list[str]:
        """Ids of up to `limit` active (or soft-deleted) records expired at `now`."""

    async def delete_buffers(self, ids: list[str]) -> int:
        """Forget records and their tags; returns how many there were."""
