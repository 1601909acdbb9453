"""The SQL clauses the SQLite and PostgreSQL backends share, written once with
each dialect's placeholders, so that both filter and page exactly alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from controlplane.core.buffers import BufferFilter
from controlplane.store.base import CodespecOrder
from controlplane.store.micros import to_micros


class Dialect:
    """SQLite's spelling; PostgresDialect overrides what PostgreSQL spells otherwise."""

    mark = "?"
    """The placeholder of one parameter."""
    always = "1 = 1"
    """A condition that holds for every row (the start of a list of ANDs)."""

    def one_of(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """`column` equals one of `values` (at least one)."""
        return f"{column} IN ({','.join([self.mark] * len(values))})", list(values)

    def boolean(self, value: bool) -> Any:
        """A parameter for a boolean column (SQLite stores 0 and 1)."""
        return int(value)


class PostgresDialect(Dialect):
    mark = "%s"
    always = "true"

    def one_of(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s::text[])", [list(values)]

    def boolean(self, value: bool) -> Any:
        return value


SQLITE = Dialect()
POSTGRES = PostgresDialect()


def run_filter(
    d: Dialect,
    tags: dict[str, str],
    since: datetime | None,
    statuses: frozenset[str] = frozenset(),
) -> tuple[str, list[Any]]:
    """WHERE clause over `runs`: every tag matches, created at `since` or later,
    in one of `statuses` (any when empty)."""
    m = d.mark
    clauses, params = [d.always], list[Any]()
    for key, value in sorted(tags.items()):
        clauses.append(f"id IN (SELECT run_id FROM run_tags WHERE key = {m} AND value = {m})")
        params += [key, value]
    if since is not None:
        clauses.append(f"created_at >= {m}")
        params.append(to_micros(since))
    if statuses:
        clause, values = d.one_of("status", sorted(statuses))
        clauses.append(clause)
        params += values
    return " AND ".join(clauses), params


def buffer_filter(d: Dialect, flt: BufferFilter, now: datetime) -> tuple[str, list[Any]]:
    """WHERE clause over `buffers`: the records `flt` selects that have not expired at `now`."""
    m = d.mark
    clauses = [f"soft_deleted = {m}", f"(expires_at IS NULL OR expires_at > {m})"]
    params: list[Any] = [d.boolean(flt.soft_deleted), to_micros(now)]
    for key, value in sorted(flt.tags.items()):
        clauses.append(f"id IN (SELECT buffer_id FROM buffer_tags WHERE key = {m} AND value = {m})")
        params += [key, value]
    for key, value in sorted(flt.exclude_tags.items()):
        clauses.append(
            f"id NOT IN (SELECT buffer_id FROM buffer_tags WHERE key = {m} AND value = {m})"
        )
        params += [key, value]
    return " AND ".join(clauses), params


def log_filter(
    d: Dialect, run_id: int, since_ns: int | None, max_id: int | None
) -> tuple[str, list[Any]]:
    """WHERE clause over `logs`: a run's lines from `since_ns` on, arrived up to `max_id`."""
    m = d.mark
    sql, params = f"run_id = {m}", [run_id]
    if since_ns is not None:
        sql += f" AND ts >= {m}"
        params.append(since_ns)
    if max_id is not None:
        sql += f" AND id <= {m}"
        params.append(max_id)
    return sql, params


def codespec_page(
    d: Dialect, order: CodespecOrder, after: tuple[int, str] | None, limit: int
) -> tuple[str, list[Any]]:
    """The end of a codespec listing over `heads h JOIN codespecs c`: where the
    page starts, its order, and one row more than `limit` (to tell whether
    another page follows)."""
    m = d.mark
    sql, params = "", list[Any]()
    if order == "name":
        if after is not None:
            sql += f" WHERE c.name > {m}"
            params.append(after[1])
        sql += " ORDER BY c.name"
    else:
        if after is not None:
            sql += f" WHERE (h.born < {m}) OR (h.born = {m} AND c.name > {m})"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY h.born DESC, c.name"
    sql += f" LIMIT {m}"
    params.append(limit + 1)
    return sql, params
