"""Buffers in runs, the pure rules: which parameters a job has, how the
bindings a user gave are checked, what a buffer made for a run is tagged and
how long it lives, what the job container is told, and which buffers a run
that ended badly leaves failed. No I/O: the service layer
(`services/run_buffers.py`) looks buffers up and makes them.

As in Tyger, a job codespec's `buffers.inputs` and `buffers.outputs` are
parameters; a run binds each to a buffer id, either as the user asked or
with a new buffer tagged `bufferName=<parameter>` plus the run's `job.tags`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from controlplane.core import buffers as records
from controlplane.core.codespec import Codespec
from controlplane.core.errors import InvalidArgument
from controlplane.core.tyger import TygerFields
from muster.common.pipes import pipe_path, pipe_variable
from muster.common.timespan import timespan_seconds

BUFFER_NAME_TAG = "bufferName"
"""The tag that names the parameter a buffer was made for (Tyger's)."""
URL_GRACE = timedelta(hours=1)
"""How long a job's access URLs outlive its run timeout: agents cannot ask
for fresh URLs yet, so one URL must last the run's whole life and the last
copies after it."""
BAD_ENDINGS = frozenset({"Failed", "Canceled"})
"""Run outcomes that leave the run's output buffers marked failed."""


@dataclass(frozen=True)
class Parameter:
    """One buffer parameter of a job codespec."""

    name: str
    output: bool


def parameters(spec: Codespec) -> list[Parameter]:
    """The job's buffer parameters, inputs first, each in declared order."""
    return [Parameter(n, False) for n in spec.buffers.inputs] + [
        Parameter(n, True) for n in spec.buffers.outputs
    ]


def check_bindings(spec: Codespec, bindings: Mapping[str, str], replicas: int) -> list[Parameter]:
    """Refuse bindings that cannot work, before anything is looked up or
    made; returns the parameters. Each key must be a parameter (Tyger's
    message), each value a buffer id, and a job with buffers runs one
    replica: muster gives one pipe to one container, never shares it."""
    params = parameters(spec)
    names = {p.name for p in params}
    for key, value in bindings.items():
        if key not in names:
            raise InvalidArgument(
                "buffers",
                f"Buffer argument '{records.shown(key)}' does not correspond to a buffer "
                "parameter on the codespec",
            )
        if value == "_":
            raise InvalidArgument(
                f"buffers.{key}",
                "ephemeral buffers ('_') are not supported; give a buffer id, or leave the "
                "parameter out to get a new buffer",
            )
        records.validate_id(value, f"buffers.{key}")
    if params and replicas > 1:
        raise InvalidArgument(
            "job.replicas",
            f"a job with buffers runs as one replica, not {replicas}: each buffer is one "
            "pipe into one container, and muster does not share pipes across replicas",
        )
    return params


def new_buffer_tags(parameter: str, fields: TygerFields) -> dict[str, str]:
    """Tags of a buffer made for `parameter`: the run's job.tags, then
    bufferName=<parameter> (Tyger's; it wins over a job tag of that name)."""
    return {**fields.job_tags, BUFFER_NAME_TAG: parameter}


def new_buffer_ttl_seconds(fields: TygerFields) -> int:
    """How long a buffer made for the run lives, from job.bufferTtl
    (D.HH:MM:SS); 0 (none given, or zero) means it never expires, like a
    buffer made by `muster buffer create` without --ttl."""
    return timespan_seconds(fields.job_buffer_ttl) if fields.job_buffer_ttl else 0


def url_expiry(created_at: datetime, timeout_seconds: int) -> datetime:
    """When the job's access URLs expire: the run's timeout, counted from its
    creation as the timeout is, plus URL_GRACE. The same for every start of
    the run, so a start sent again carries the same URLs."""
    return created_at + timedelta(seconds=timeout_seconds) + URL_GRACE


@dataclass(frozen=True)
class Pipe:
    """One buffer as the job container gets it: a FIFO and a signed URL."""

    name: str
    output: bool
    buffer_id: str
    access_url: str
    ca_pem: str = ""


def pipe_env(params: list[Parameter]) -> dict[str, str]:
    """`<NAME>_PIPE` -> the FIFO's path in the container, per parameter."""
    return {pipe_variable(p.name): pipe_path(p.name) for p in params}


def outputs_to_fail(status: str, spec: Codespec, bound: Mapping[str, str]) -> list[str]:
    """Ids of the output buffers a run that ended with `status` leaves
    failed: all of them when it failed or was canceled, for whatever reason
    (a reader must not wait for bytes that will never come); none otherwise."""
    if status not in BAD_ENDINGS:
        return []
    return [bound[name] for name in spec.buffers.outputs if bound.get(name)]
