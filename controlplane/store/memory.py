"""In-memory Store for unit tests and simulations; held to the same contract
tests as the SQLite backend, so services behave the same on both."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from controlplane.core.auth import ApiToken, JoinToken
from controlplane.core.buffers import Buffer, BufferFilter, matches
from controlplane.core.codespec import Codespec
from controlplane.core.errors import AlreadyExists, Conflict
from controlplane.core.images import StoredLogin
from controlplane.core.logs import LogLine, StoredLine, time_key
from controlplane.core.nodes import Node
from controlplane.core.runs import TERMINAL, Run
from controlplane.store.base import (
    BufferChange,
    CodespecOrder,
    CodespecPage,
    KnownRequest,
    Lease,
    Store,
)
from controlplane.store.documents import node_from_doc, node_to_doc, run_from_doc, run_to_doc
from controlplane.store.log_marker import MARKER_ROOM, MARKER_SEQUENCE
from controlplane.store.micros import to_micros


class MemoryStore(Store):
    """Dict-backed Store. Not durable by design."""

    def __init__(self) -> None:
        self._codespecs: dict[str, list[Codespec]] = {}
        # Runs and nodes are kept as documents so callers never share mutable state.
        self._runs: dict[int, dict[str, Any]] = {}
        self._last_run_id = 0
        self._nodes: dict[str, dict[str, Any]] = {}
        self._logs: list[StoredLine] = []
        self._log_keys: set[tuple[int, str, int, str, int]] = set()
        self._last_log_id = 0  # arrival ids only grow, even after deletions
        self._dropped: dict[int, int] = {}  # run id -> oldest log lines dropped (log cap)
        self._removed: dict[str, datetime] = {}
        self._tokens: dict[str, ApiToken] = {}
        self._join_tokens: dict[str, JoinToken] = {}
        self._registry_logins: dict[str, StoredLogin] = {}
        self._cluster_id = secrets.token_hex(16)
        # request id -> (run id, when, fingerprint of what was asked)
        self._requests: dict[str, tuple[int, datetime, str]] = {}
        self._buffers: dict[str, Buffer] = {}  # each with a tags dict nobody else holds
        self._lease: Lease | None = None  # one control plane per memory store

    async def close(self) -> None:
        """Nothing to release."""

    async def latest_codespec(self, name: str) -> Codespec | None:
        versions = self._codespecs.get(name)
        return versions[-1] if versions else None

    async def get_codespec(self, name: str, version: int) -> Codespec | None:
        versions = self._codespecs.get(name, [])
        return versions[version - 1] if 1 <= version <= len(versions) else None

    async def insert_codespec(self, spec: Codespec) -> Codespec:
        versions = self._codespecs.setdefault(spec.name, [])
        if len(versions) + 1 != spec.version:
            raise Conflict(f"codespec {spec.name} is at version {len(versions)}")
        versions.append(spec)
        return spec

    async def list_codespecs(
        self,
        *,
        prefix: str,
        order: CodespecOrder,
        limit: int,
        after: tuple[int, str] | None,
    ) -> CodespecPage:
        heads = [
            (to_micros(v[0].created_at), v[-1])  # type: ignore[arg-type]  # stored: set
            for name, v in self._codespecs.items()
            if name.startswith(prefix) and v
        ]
        if order == "name":
            heads.sort(key=lambda h: h[1].name)
            if after is not None:
                heads = [h for h in heads if h[1].name > after[1]]
        else:
            heads.sort(key=lambda h: (-h[0], h[1].name))
            if after is not None:
                heads = [h for h in heads if (-h[0], h[1].name) > (-after[0], after[1])]
        page = heads[:limit]
        cursor = (page[-1][0], page[-1][1].name) if len(heads) > limit else None
        return CodespecPage([h[1] for h in page], cursor)

    async def insert_run(self, run: Run, request_id: str = "", fingerprint: str = "") -> Run:
        self._last_run_id += 1  # ids only grow, even after the newest run was deleted
        run.id = self._last_run_id
        self._runs[run.id] = run_to_doc(run)
        if request_id:
            self._requests[request_id] = (run.id, run.created_at, fingerprint)
        return run

    async def run_for_request(self, request_id: str, since: datetime) -> KnownRequest | None:
        found = self._requests.get(request_id)
        if found is None or found[1] < since or found[0] not in self._runs:
            return None
        return KnownRequest(found[0], found[2])

    async def forget_requests(self, before: datetime, limit: int) -> int:
        old = [k for k, (_, at, _) in self._requests.items() if at < before][:limit]
        for key in old:
            del self._requests[key]
        return len(old)

    async def save_run(self, run: Run) -> None:
        await self.save_runs([run])

    async def save_runs(self, runs: Sequence[Run]) -> None:
        for run in runs:
            if run.id not in self._runs:
                raise KeyError(f"run {run.id} does not exist")
        for run in runs:
            self._runs[run.id] = run_to_doc(run)

    async def get_run(self, run_id: int) -> Run | None:
        doc = self._runs.get(run_id)
        return run_from_doc(doc) if doc else None

    def _matching(self, tags: dict[str, str], since: datetime | None) -> list[Run]:
        runs = [run_from_doc(d) for _, d in sorted(self._runs.items(), reverse=True)]
        return [
            r
            for r in runs
            if all(r.tags.get(k) == v for k, v in tags.items())
            and (since is None or r.created_at >= since)
        ]

    async def list_runs(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[Run], bool]:
        runs = [
            r
            for r in self._matching(tags, since)
            if (not statuses or r.status in statuses) and (before_id is None or r.id < before_id)
        ]
        return runs[:limit], len(runs) > limit

    async def count_runs(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._matching(tags, since):
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    async def active_runs(self) -> list[Run]:
        return [
            run_from_doc(d) for _, d in sorted(self._runs.items()) if d["status"] not in TERMINAL
        ]

    async def cluster_id(self) -> str:
        return self._cluster_id

    async def acquire_lease(
        self, holder: str, api_address: str, agent_address: str, seconds: float
    ) -> Lease:
        if self._lease is None:
            self._lease = Lease(holder, 1, api_address, agent_address, float("inf"))
        return self._lease

    async def release_lease(self, holder: str) -> None:
        """Nothing to hand over: nobody else shares this store."""

    async def set_fence(self, epoch: int | None) -> None:
        """Nothing to fence: no other control plane can share this store."""

    async def save_node(self, node: Node) -> None:
        self._nodes[node.name] = node_to_doc(node)

    async def list_nodes(self) -> list[Node]:
        return [node_from_doc(d) for _, d in sorted(self._nodes.items())]

    async def delete_node(self, name: str, now: datetime) -> None:
        self._nodes.pop(name, None)
        self._removed[name] = now

    async def node_removed_at(self, name: str) -> datetime | None:
        return self._removed.get(name)

    async def insert_token(self, token: ApiToken) -> None:
        if token.name in self._tokens or any(t.hash == token.hash for t in self._tokens.values()):
            raise AlreadyExists(f"a token named '{token.name}' exists already; choose another name")
        self._tokens[token.name] = token

    async def list_tokens(self) -> list[ApiToken]:
        return [t for _, t in sorted(self._tokens.items())]

    async def revoke_token(self, name: str, now: datetime) -> ApiToken | None:
        token = self._tokens.get(name)
        if token is not None and token.revoked_at is None:
            token = self._tokens[name] = replace(token, revoked_at=now)
        return token

    async def insert_join_token(self, token: JoinToken) -> None:
        self._join_tokens[token.hash] = token

    async def use_join_token(self, hash: str, node: str, now: datetime) -> JoinToken | None:
        token = self._join_tokens.get(hash)
        if token is None or token.used_by or now >= token.expires_at:
            return None
        token = self._join_tokens[hash] = replace(token, used_by=node)
        return token

    async def save_registry_login(self, login: StoredLogin) -> None:
        assert login.updated_at is not None
        self._registry_logins[login.registry] = login

    async def list_registry_logins(self) -> list[StoredLogin]:
        return [self._registry_logins[k] for k in sorted(self._registry_logins)]

    async def delete_registry_login(self, registry: str) -> bool:
        return self._registry_logins.pop(registry, None) is not None

    async def append_logs(self, lines: list[LogLine]) -> int:
        added = 0
        for ln in lines:
            key = (ln.run_id, ln.role, ln.replica, ln.stream, ln.sequence)
            if ln.run_id in self._runs and key not in self._log_keys:
                self._log_keys.add(key)
                self._last_log_id += 1
                self._logs.append(StoredLine(self._last_log_id, ln))
                added += 1
        return added

    async def last_log_id(self, run_id: int) -> int:
        return max((s.id for s in self._logs if s.line.run_id == run_id), default=0)

    def _selected(self, run_id: int, since_ns: int | None, max_id: int | None) -> list[StoredLine]:
        chosen = [
            s
            for s in self._logs
            if s.line.run_id == run_id
            and (since_ns is None or s.line.time_ns >= since_ns)
            and (max_id is None or s.id <= max_id)
        ]
        return sorted(chosen, key=time_key)

    async def read_logs(
        self,
        run_id: int,
        *,
        since_ns: int | None,
        max_id: int | None,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[StoredLine]:
        chosen = self._selected(run_id, since_ns, max_id)
        if after is not None:
            chosen = [s for s in chosen if time_key(s) > after]
        return chosen[:limit]

    async def tail_logs(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> list[StoredLine]:
        return self._selected(run_id, since_ns, max_id)[-count:] if count else []

    async def tail_start(
        self, run_id: int, *, count: int, since_ns: int | None, max_id: int | None
    ) -> tuple[int, int] | None:
        chosen = self._selected(run_id, since_ns, max_id)[-count:] if count else []
        return time_key(chosen[0]) if chosen else None

    async def new_logs(self, run_id: int, *, after_id: int, limit: int) -> list[StoredLine]:
        return [s for s in self._logs if s.line.run_id == run_id and s.id > after_id][:limit]

    # -- retention -------------------------------------------------------------

    async def finished_before(self, before: datetime, limit: int) -> list[int]:
        done = [
            (run.finished_at, run.id)
            for run in map(run_from_doc, self._runs.values())
            if run.finished_at is not None and run.finished_at < before
        ]
        return [run_id for _, run_id in sorted(done)[:limit]]

    def _forget_lines(self, doomed: list[StoredLine]) -> None:
        gone = {id(s) for s in doomed}
        self._logs = [s for s in self._logs if id(s) not in gone]
        for s in doomed:
            ln = s.line
            self._log_keys.discard((ln.run_id, ln.role, ln.replica, ln.stream, ln.sequence))

    async def delete_logs(self, run_id: int, limit: int) -> int:
        doomed = [s for s in self._logs if s.line.run_id == run_id][:limit]
        self._forget_lines(doomed)
        return len(doomed)

    async def delete_runs(self, run_ids: list[int]) -> int:
        wanted = set(run_ids)
        self._forget_lines([s for s in self._logs if s.line.run_id in wanted])
        for key, (run_id, _, _) in list(self._requests.items()):
            if run_id in wanted:
                del self._requests[key]
        for run_id in wanted:
            self._dropped.pop(run_id, None)
        return sum(self._runs.pop(run_id, None) is not None for run_id in wanted)

    async def log_usage(self, run_id: int) -> tuple[int, int]:
        size = sum(len(s.line.text.encode()) for s in self._logs if s.line.run_id == run_id)
        return size, self._dropped.get(run_id, 0)

    async def runs_over_log_cap(self, max_bytes: int, limit: int) -> list[int]:
        sizes: dict[int, int] = {}
        for s in self._logs:
            sizes[s.line.run_id] = sizes.get(s.line.run_id, 0) + len(s.line.text.encode())
        over = sorted((-size, run_id) for run_id, size in sizes.items() if size > max_bytes)
        return [run_id for _, run_id in over[:limit]]

    async def drop_oldest_logs(self, run_id: int, max_bytes: int, limit: int, marker: str) -> int:
        size, dropped = await self.log_usage(run_id)
        if size <= max_bytes:
            return 0
        excess, freed, doomed = size - max_bytes + MARKER_ROOM, 0, []
        lines = [s for s in self._logs if s.line.run_id == run_id and s.line.sequence >= 0]
        for stored in sorted(lines, key=time_key)[:limit]:
            doomed.append(stored)
            freed += len(stored.line.text.encode())
            if freed >= excess:
                break
        if not doomed:
            return 0
        total = self._dropped[run_id] = dropped + len(doomed)
        self._forget_lines(doomed)
        self._forget_lines(
            [s for s in self._logs if s.line.run_id == run_id and s.line.sequence < 0]
        )
        at = max(0, doomed[-1].line.time_ns - 1)
        self._last_log_id += 1
        text = marker.format(dropped=total)
        line = LogLine(run_id, "job", 0, "stderr", MARKER_SEQUENCE, at, text)
        self._logs.append(StoredLine(self._last_log_id, line))
        self._log_keys.add((run_id, "job", 0, "stderr", MARKER_SEQUENCE))
        return len(doomed)

    async def compact(self, pages: int) -> int:
        return 0

    # -- buffers ---------------------------------------------------------------

    @staticmethod
    def _copy(buffer: Buffer) -> Buffer:
        return replace(buffer, tags=dict(buffer.tags))

    def _newest(self, flt: BufferFilter, now: datetime) -> list[Buffer]:
        chosen = [b for b in self._buffers.values() if matches(b, flt, now)]
        return sorted(chosen, key=lambda b: (to_micros(b.created_at), b.id), reverse=True)

    async def insert_buffer(self, buffer: Buffer) -> None:
        if buffer.id in self._buffers:
            raise AlreadyExists(f"a buffer with the id '{buffer.id}' exists already")
        self._buffers[buffer.id] = self._copy(buffer)

    async def get_buffer(self, buffer_id: str) -> Buffer | None:
        found = self._buffers.get(buffer_id)
        return self._copy(found) if found else None

    async def list_buffers(
        self, flt: BufferFilter, *, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> tuple[list[Buffer], bool]:
        chosen = self._newest(flt, now)
        if after is not None:
            chosen = [b for b in chosen if (to_micros(b.created_at), b.id) < after]
        return [self._copy(b) for b in chosen[:limit]], len(chosen) > limit

    async def count_buffers(self, flt: BufferFilter, *, now: datetime) -> int:
        return len(self._newest(flt, now))

    def _apply(
        self, current: list[tuple[str, Buffer | None]], change: BufferChange
    ) -> list[Buffer]:
        """All changes are worked out before any is stored, so an exception stores none."""
        stored = []
        for buffer_id, buffer in current:
            after = change(buffer_id, self._copy(buffer) if buffer else None)
            if after is not None:
                assert after.id == buffer_id and buffer is not None, "change keeps the id"
                stored.append(self._copy(after))
        for buffer in stored:
            self._buffers[buffer.id] = buffer
        return [self._copy(b) for b in stored]

    async def change_buffers(self, ids: list[str], change: BufferChange) -> list[Buffer]:
        return self._apply([(i, self._buffers.get(i)) for i in ids], change)

    async def change_matching(
        self, flt: BufferFilter, *, now: datetime, change: BufferChange
    ) -> list[Buffer]:
        return self._apply([(b.id, b) for b in self._newest(flt, now)], change)

    async def expired_buffers(self, now: datetime, *, soft_deleted: bool, limit: int) -> list[str]:
        done = [
            (b.expires_at, b.id)
            for b in self._buffers.values()
            if b.soft_deleted == soft_deleted and b.expires_at is not None and b.expires_at <= now
        ]
        return [buffer_id for _, buffer_id in sorted(done)[:limit]]

    async def delete_buffers(self, ids: list[str]) -> int:
        return sum(self._buffers.pop(i, None) is not None for i in set(ids))
