"""Tyger's run fields muster stores and returns but does not act on, and run ETags.

`cluster` names Tyger's target cluster (a muster control plane is one
cluster); `bufferAccessTtl`, the job's buffer `tags` and `bufferTtl` are for
the buffers made for a run. They are kept with the run so files and `run
show` output round-trip, and so the buffer support can use them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controlplane.core.errors import InvalidArgument
from muster.common.timespan import TimeSpanError, timespan_seconds

if TYPE_CHECKING:
    from controlplane.core.runs import Run

CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]{0,62}$")


@dataclass(frozen=True)
class TygerFields:
    """What a run file may say that muster keeps as written."""

    cluster: str = ""
    buffer_access_ttl: str = ""
    job_tags: dict[str, str] = field(default_factory=dict)
    job_buffer_ttl: str = ""

    def to_doc(self) -> dict[str, Any]:
        """The stored form (camelCase, as Tyger writes them)."""
        return {
            "cluster": self.cluster,
            "bufferAccessTtl": self.buffer_access_ttl,
            "jobTags": dict(self.job_tags),
            "jobBufferTtl": self.job_buffer_ttl,
        }

    @staticmethod
    def from_doc(doc: dict[str, Any] | None) -> TygerFields:
        """Inverse of to_doc; runs stored before these fields have none."""
        doc = doc or {}
        return TygerFields(
            doc.get("cluster", ""),
            doc.get("bufferAccessTtl", ""),
            dict(doc.get("jobTags", {})),
            doc.get("jobBufferTtl", ""),
        )


def validate_time_span(value: str, path: str) -> str:
    """Tyger's TimeSpan text: D.HH:MM[:SS] ("" for none), read as the CLI reads it."""
    if value:
        try:
            timespan_seconds(value)
        except TimeSpanError as exc:
            raise InvalidArgument(path, str(exc)) from None
    return value


def validate_fields(fields: TygerFields) -> None:
    """Refuse what could never be meant (tags follow the run tag rules elsewhere)."""
    if fields.cluster and not CLUSTER.match(fields.cluster):
        raise InvalidArgument(
            "cluster",
            "a cluster name is 1-63 characters of A-Z a-z 0-9 - _ ., starting alphanumeric",
        )
    validate_time_span(fields.buffer_access_ttl, "bufferAccessTtl")
    validate_time_span(fields.job_buffer_ttl, "job.bufferTtl")


def run_etag(
    run_id: int,
    status: str,
    status_reason: str,
    running_count: int,
    times: tuple[datetime | None, ...],
    tags: dict[str, str],
) -> str:
    """Tyger's eTag: it changes whenever what a user sees of the run changes
    (status, reason, running count, times, tags), so a tag update can be
    made conditional on the run being as the caller last read it."""
    material = json.dumps(
        [
            run_id,
            status,
            status_reason,
            running_count,
            [t.isoformat() if t else None for t in times],
            sorted(tags.items()),
        ]
    )
    return hashlib.blake2b(material.encode(), digest_size=8).hexdigest()


def etag_of(run: Run) -> str:
    """The ETag of a run as it is now."""
    return run_etag(
        run.id,
        run.status,
        run.status_reason,
        run.running_count,
        (run.created_at, run.started_at, run.finished_at),
        run.tags,
    )
