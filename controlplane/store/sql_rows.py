"""Domain objects from the rows of the SQL backends (sqlite3.Row and psycopg's
dict rows alike: both are read by column name)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from controlplane.core.auth import ApiToken, JoinToken, Role
from controlplane.core.buffers import Buffer
from controlplane.core.codespec import Codespec, from_document
from controlplane.core.images import StoredLogin
from controlplane.store.base import CodespecPage
from controlplane.store.micros import from_micros, maybe_time


class Row(Protocol):
    def __getitem__(self, column: str, /) -> Any: ...


def codespec_from_row(row: Row) -> Codespec:
    return from_document(
        row["name"], json.loads(row["spec"]), row["version"], from_micros(row["created_at"])
    )


def codespec_page_from_rows(rows: Sequence[Row], limit: int) -> CodespecPage:
    """A page from up to `limit` + 1 rows (with `born`, the first version's
    time): the cursor is that of the last item when a row is left over."""
    items = [codespec_from_row(r) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = (int(last["born"]), last["name"])
    return CodespecPage(items, cursor)


def token_from_row(row: Row) -> ApiToken:
    return ApiToken(
        name=row["name"],
        role=Role(row["role"]),
        hash=row["hash"],
        created_at=from_micros(row["created_at"]),
        expires_at=maybe_time(row["expires_at"]),
        revoked_at=maybe_time(row["revoked_at"]),
    )


def join_token_from_row(row: Row) -> JoinToken:
    """`pools` is the JSON text of the list."""
    return JoinToken(
        hash=row["hash"],
        pools=tuple(json.loads(row["pools"])),
        created_at=from_micros(row["created_at"]),
        expires_at=from_micros(row["expires_at"]),
        used_by=row["used_by"],
    )


def login_from_row(row: Row) -> StoredLogin:
    return StoredLogin(
        row["registry"], row["username"], bytes(row["sealed"]), from_micros(row["updated_at"])
    )


def buffers_from_rows(rows: Sequence[Row], tags: dict[str, dict[str, str]]) -> list[Buffer]:
    """Records from buffer rows and the tags of each (by buffer id)."""
    return [
        Buffer(
            id=r["id"],
            created_at=from_micros(r["created_at"]),
            tags=tags[r["id"]],
            expires_at=maybe_time(r["expires_at"]),
            soft_deleted=bool(r["soft_deleted"]),
            location=r["location"],
        )
        for r in rows
    ]
