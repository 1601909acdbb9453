"""One place that turns `--db` into a Store, so that services never know which
backend they run on.

Accepted forms:
  PATH, sqlite:///abs/path, sqlite:rel/path   SQLite file (the default)
  :memory:, sqlite::memory:                   SQLite in memory (tests)
  memory:                                     the dict store (tests, benchmarks)
  postgresql://user@host:port/db              PostgreSQL 15+ (also postgres://)
Anything else that looks like a URL (`scheme:...`) is refused with one line
rather than taken for a file name: `postgresql:` must never become a folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controlplane.store.base import Store

BackendKind = Literal["sqlite", "memory", "postgresql"]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
KNOWN = "a file path, sqlite:///PATH, memory: or postgresql://USER@HOST:PORT/DB"


@dataclass(frozen=True)
class StoreUrl:
    """What `--db` names: the backend and what it needs (a path or a URL)."""

    kind: BackendKind
    target: str


def parse_store_url(url: str) -> StoreUrl:
    """Classify `url`; ValueError (one line, for the command line) if unknown."""
    text = url.strip()
    if not text:
        raise ValueError(f"--db is empty; give {KNOWN}")
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if not scheme:
        return StoreUrl("sqlite", text)
    if scheme in ("postgresql", "postgres"):
        if not text[len(scheme) + 1 :].startswith("//"):
            raise ValueError(f"--db {url}: write postgresql://USER@HOST:PORT/DB")
        return StoreUrl("postgresql", text)
    if scheme == "memory":
        if text[len("memory:") :].strip("/"):
            raise ValueError(f"--db {url}: the memory store takes no path; write memory:")
        return StoreUrl("memory", "")
    if scheme == "sqlite":
        path = text[len("sqlite:") :]
        path = path[2:] if path.startswith("//") else path  # sqlite:///abs -> /abs
        if not path:
            raise ValueError(f"--db {url}: name the file, e.g. sqlite:///var/lib/muster/cp.db")
        return StoreUrl("sqlite", path)
    hint = "" if "//" in text else f" (a file whose name has a colon: ./{text})"
    raise ValueError(f"--db {url}: unknown store '{scheme}:'; give {KNOWN}{hint}")


def store_directory(url: str | Path) -> Path | None:
    """The directory of a SQLite file (files that belong beside the database
    go there); None for stores that have no file (memory, PostgreSQL)."""
    parsed = parse_store_url(str(url))
    if parsed.kind != "sqlite" or parsed.target == ":memory:":
        return None
    return Path(parsed.target).parent


async def open_store(url: str | Path) -> Store:
    """Open (and migrate) the store `url` names."""
    parsed = parse_store_url(str(url))
    if parsed.kind == "memory":
        from controlplane.store.memory import MemoryStore

        return MemoryStore()
    if parsed.kind == "postgresql":
        from controlplane.store.postgres import PostgresStore

        return await PostgresStore.open(parsed.target)
    from controlplane.store.sqlite import SqliteStore

    return await SqliteStore.open(parsed.target)


async def migrate_store(url: str | Path) -> tuple[int, int]:
    """Apply every migration the store lacks and close it: (version before, after).
    The memory store has no schema: (0, 0)."""
    parsed = parse_store_url(str(url))
    if parsed.kind == "memory":
        return (0, 0)
    if parsed.kind == "postgresql":
        from controlplane.store.postgres import migrate

        return await migrate(parsed.target)
    from controlplane.store.sqlite import SqliteStore, schema_version

    before = await schema_version(parsed.target)
    store = await SqliteStore.open(parsed.target)
    await store.close()
    return before, await schema_version(parsed.target)
