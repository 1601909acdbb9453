"""Run queries: listing with filters and pages, counting by status."""

from __future__ import annotations

from datetime import datetime

from controlplane.core.errors import InvalidArgument
from controlplane.core.runs import Run
from controlplane.services import paging
from controlplane.services.run_requests import validate_tags
from controlplane.store.base import Store


class RunQueries:
    """Reads of many runs at once; one run is the orchestrator's."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def list(
        self,
        *,
        statuses: frozenset[str],
        tags: dict[str, str],
        since: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Run], str]:
        """Runs newest first, filtered; one page and the token of the next ("": none).

        A token is bound to its filters: reused with others it is refused."""
        limit = paging.page_size(page_size)
        validate_tags(tags)
        query = {
            "statuses": sorted(statuses),
            "tags": dict(sorted(tags.items())),
            "since": since.isoformat() if since else None,
        }
        before = paging.decode(page_token, query)
        if before is not None and (
            not isinstance(before, int) or isinstance(before, bool) or not 0 < before < 2**63
        ):
            raise InvalidArgument("page_token", "the page token is malformed")
        runs, more = await self._store.list_runs(
            statuses=statuses, tags=tags, since=since, limit=limit, before_id=before
        )
        token = paging.encode(query, runs[-1].id) if more and runs else ""
        return runs, token

    async def count(self, *, tags: dict[str, str], since: datetime | None) -> dict[str, int]:
        """Runs per status, filtered."""
        validate_tags(tags)
        return await self._store.count_runs(tags=tags, since=since)
