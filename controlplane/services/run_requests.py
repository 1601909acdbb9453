"""Validated, resolved inputs of CreateRun (the service-layer view, no protobuf)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace

from controlplane.core import codespec as cs
from controlplane.core.codespec import Codespec
from controlplane.core.errors import AlreadyExists, InvalidArgument
from controlplane.core.images import PullPolicy
from controlplane.core.runs import DEFAULT_TIMEOUT_SECONDS, Target
from controlplane.core.tyger import TygerFields
from controlplane.services.codespecs import CodespecService

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TAG_KEY = re.compile(r"^[A-Za-z0-9\-_.]{1,128}$")
TAG_VALUE = re.compile(r"^[A-Za-z0-9\-_.]{0,256}$")
MAX_TAGS = 100
MAX_TIMEOUT_SECONDS = 30 * 86_400


@dataclass(frozen=True)
class TargetRequest:
    """What the user asked for one half of a run."""

    reference: str = ""  # "name" or "name/versions/N"
    inline: Codespec | None = None
    node_pool: str = ""
    replicas: int | None = None
    restart: bool = False  # workers only: restart in place when the process exits


@dataclass(frozen=True)
class RunRequest:
    """A CreateRun call in domain terms."""

    job: TargetRequest
    worker: TargetRequest | None = None
    timeout_seconds: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    pull_policy: PullPolicy | None = None  # None: the control plane's default
    tyger: TygerFields = field(default_factory=TygerFields)  # stored as written
    buffers: dict[str, str] = field(default_factory=dict)
    """Buffer parameter -> id, as the user bound them; the others get new buffers."""
    request_id: str = ""
    """The client's id for this request ("" none): a retry with it within
    24 h returns the run it created (docs/contract.md §2)."""


def fingerprint(request: RunRequest) -> str:
    """A hash of what the request asks for (everything but its id): a retry
    under the same id must ask for the same run, or it is not a retry."""
    asked = asdict(replace(request, request_id=""))
    if not asked["buffers"]:
        del asked["buffers"]  # requests without bindings hash as they did before buffers
    for half in (asked["job"], asked["worker"] or {}):
        if not half.get("restart", True):
            del half["restart"]  # nor do those without a restart policy
    text = json.dumps(asked, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_request(request: RunRequest, known: str, run_id: int) -> None:
    """Refuse a request id reused for a different request (a client bug that
    would otherwise silently get someone else's run)."""
    if known and known != fingerprint(request):
        raise AlreadyExists(
            f"request_id '{request.request_id}' already created run {run_id} with different "
            "content; use a new request id for a new run (the CLI makes one per invocation)"
        )


def validate_request_id(request_id: str) -> str:
    """A request id is "" (none) or 16-64 characters of A-Z a-z 0-9 - _ (a UUID fits)."""
    if request_id and not REQUEST_ID.match(request_id):
        raise InvalidArgument(
            "request_id",
            "must be 16-64 characters of A-Z a-z 0-9 - _ (a UUID, say); leave it empty for none",
        )
    return request_id


def validate_tags(tags: dict[str, str], path: str = "tags") -> None:
    """Tag limits (docs/contract.md §2): at most 100; key [A-Za-z0-9-_.]{1,128},
    value [A-Za-z0-9-_.]{0,256}."""
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(path, f"at most {MAX_TAGS} tags are allowed, got {len(tags)}")
    for key, value in tags.items():
        if not TAG_KEY.match(key):
            raise InvalidArgument(
                f"{path}.{key}", "tag keys are 1-128 characters of A-Z a-z 0-9 - _ ."
            )
        if not TAG_VALUE.match(value):
            raise InvalidArgument(
                f"{path}.{key}", "tag values are 0-256 characters of A-Z a-z 0-9 - _ ."
            )


def timeout_of(request: RunRequest) -> int:
    """The run timeout in seconds, defaulting to 12 h."""
    if request.timeout_seconds is None:
        return DEFAULT_TIMEOUT_SECONDS
    if not 1 <= request.timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(
            "timeoutSeconds", f"must be between 1 and {MAX_TIMEOUT_SECONDS} seconds"
        )
    return request.timeout_seconds


async def resolve_target(codespecs: CodespecService, request: TargetRequest, role: str) -> Target:
    """Resolve a codespec reference (or validate an inline codespec) into a snapshot."""
    path = f"{role}.codespec"
    if request.inline is not None and request.reference:
        raise InvalidArgument(path, "give either a codespec reference or an inline codespec")
    if request.inline is not None:
        inline = replace(request.inline, name=request.inline.name or f"inline-{role}")
        try:
            cs.validate(inline)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{path}.{exc.field}", exc.message) from None
        spec, reference = cs.normalize(inline), ""
    elif request.reference:
        spec, reference = await codespecs.resolve(request.reference, path), request.reference
    else:
        raise InvalidArgument(path, f"the {role} needs a codespec: a name or an inline codespec")
    replicas = 1 if request.replicas is None else request.replicas
    if request.restart and role != "worker":
        raise InvalidArgument(
            f"{role}.restartPolicy",
            "only workers can be restarted; a job's exit decides the run's outcome",
        )
    return Target(spec, reference, request.node_pool, replicas, restart=request.restart)
