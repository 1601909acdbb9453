"""The store interface. Services depend on this, never on a backend, so that a
PostgreSQL implementation can follow without touching them; the contract test
suite in tests/controlplane/test_store_contract.py runs against every backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from controlplane.core.codespec import Codespec

CodespecOrder = Literal["newest", "name"]


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
