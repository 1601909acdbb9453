"""In-memory Store for unit tests and simulations; held to the same contract
tests as the SQLite backend, so services behave the same on both."""

from __future__ import annotations

from controlplane.core.codespec import Codespec
from controlplane.core.errors import Conflict
from controlplane.store.base import CodespecOrder, CodespecPage
from controlplane.store.sqlite import to_micros


class MemoryStore:
    """Dict-backed Store. Not durable by design."""

    def __init__(self) -> None:
        self._codespecs: dict[str, list[Codespec]] = {}

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
            (to_micros(v[0].created_at), v[-1])  # type: ignore[arg-type]
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
