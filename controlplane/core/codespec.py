"""Codespecs: the domain model, its validation rules and its equality.

A codespec version is immutable. Creating a codespec whose content equals the
latest version is a no-op, so equality must ignore what carries no meaning:
the order of `env`, `endpoints` and buffer lists, and how a quantity is
written (`1` == `1000m`). The order of `command` and `args` does matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from controlplane.core.errors import InvalidArgument
from controlplane.core.quantities import QuantityError, parse_quantity

Kind = Literal["job", "worker"]
KINDS: tuple[Kind, ...] = ("job", "worker")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9\-._]{0,62}$")
ENDPOINT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
BUFFER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,62}$")
MAX_DECLARED_REPLICAS = 10_000
"""The largest maxReplicas a codespec may declare. Runs are further held to
admission.MAX_RUN_REPLICAS per role, which is smaller on purpose: the
codespec states what its program supports, the cluster what it will start."""
MAX_CPU = 1_000_000  # cores: far above any machine, far below integer overflow
MAX_MEMORY = 2**60  # bytes (1 EiB)
MAX_GPU = 1024
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Quantities:
    """A cpu/memory pair as the user wrote it (None means not set)."""

    cpu: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class Resources:
    """Per-replica requests (reserved by the scheduler), limits (enforced) and GPUs."""

    requests: Quantities = field(default_factory=Quantities)
    limits: Quantities = field(default_factory=Quantities)
    gpu: int = 0
    shm: str | None = None
    """Size of /dev/shm as written ("1Gi"); None: the runtime's default."""


@dataclass(frozen=True)
class Buffers:
    """Tyger buffer names; jobs only."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Codespec:
    """One version of a container specification."""

    name: str
    image: str
    kind: Kind = "job"
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    max_replicas: int | None = None
    buffers: Buffers = field(default_factory=Buffers)
    endpoints: dict[str, int] = field(default_factory=dict)
    version: int = 0
    created_at: datetime | None = None


def validate_name(name: str, path: str = "name") -> None:
    """Codespec names (docs/contract.md §1): 1-63 chars of a-z 0-9 - . _, starting alphanumeric."""
    if not name:
        raise InvalidArgument(path, "a name is required")
    if not NAME_RE.match(name):
        raise InvalidArgument(
            path,
            f"'{name}' is not a valid name; use 1-63 characters of a-z, 0-9, '-', '.' "
            "or '_', starting with a letter or digit",
        )


def _validate_quantity(value: str | None, path: str) -> Decimal | None:
    if value is None:
        return None
    try:
        parsed = parse_quantity(value)
    except QuantityError as exc:
        raise InvalidArgument(path, str(exc)) from None
    if path.endswith(".cpu") and parsed > MAX_CPU:
        raise InvalidArgument(path, f"'{value}' is more CPU than any node has (max {MAX_CPU})")
    if path.endswith(".memory") and parsed > MAX_MEMORY:
        raise InvalidArgument(path, f"'{value}' is more memory than any node has (max 1Ei)")
    return parsed


def _validate_resources(res: Resources) -> None:
    parsed: dict[str, Decimal | None] = {}
    for group_name, group in (("requests", res.requests), ("limits", res.limits)):
        for key in ("cpu", "memory"):
            path = f"resources.{group_name}.{key}"
            parsed[path] = _validate_quantity(getattr(group, key), path)
    for key in ("cpu", "memory"):
        request = parsed[f"resources.requests.{key}"]
        limit = parsed[f"resources.limits.{key}"]
        if request is not None and limit is not None and request > limit:
            raise InvalidArgument(
                f"resources.requests.{key}",
                f"the request ({getattr(res.requests, key)}) exceeds the limit "
                f"({getattr(res.limits, key)}); lower the request or raise the limit",
            )
    if not 0 <= res.gpu <= MAX_GPU:
        raise InvalidArgument("resources.gpu", f"must be between 0 and {MAX_GPU}")
    shm = _validate_quantity(res.shm, "resources.shm")
    if shm is not None and not 1 <= shm <= MAX_MEMORY:
        raise InvalidArgument(
            "resources.shm", f"'{res.shm}' is not a size of /dev/shm; use e.g. 64Mi or 1Gi"
        )


def gpu_count(value: int | str, path: str = "resources.gpu") -> int:
    """GPUs as a whole number. Tyger files write them as quantity strings
    ("1"), so any quantity equal to a whole number is accepted ("2", "1.0")."""
    if isinstance(value, bool):
        raise InvalidArgument(path, "expected a whole number of GPUs")
    if isinstance(value, str):
        try:
            parsed = parse_quantity(value)
        except QuantityError as exc:
            raise InvalidArgument(path, str(exc)) from None
        if parsed != parsed.to_integral_value():
            raise InvalidArgument(path, f"'{value}' is not a whole number of GPUs")
        value = int(parsed)
    if not isinstance(value, int) or not 0 <= value <= MAX_GPU:
        raise InvalidArgument(path, f"must be between 0 and {MAX_GPU}")
    return value


def _validate_endpoints(spec: Codespec) -> None:
    if spec.endpoints and spec.kind != "worker":
        raise InvalidArgument(
            "endpoints",
            "a job codespec cannot declare endpoints; endpoints belong to worker "
            "codespecs (kind: worker)",
        )
    seen: dict[str, str] = {}
    for name, port in spec.endpoints.items():
        path = f"endpoints.{name}"
        if not ENDPOINT_RE.match(name):
            raise InvalidArgument(
                path,
                f"'{name}' is not a valid endpoint name; start with a letter, then "
                "letters, digits or '_'",
            )
        upper = name.upper()
        if upper in seen:
            raise InvalidArgument(
                path,
                f"endpoint names must be unique ignoring case ('{seen[upper]}' and "
                f"'{name}' both become TYGER_{upper}_WORKER_ENDPOINT_ADDRESSES)",
            )
        seen[upper] = name
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidArgument(path, f"port {port!r} is out of range; use 1-65535")


def _validate_buffers(spec: Codespec) -> None:
    names = (*spec.buffers.inputs, *spec.buffers.outputs)
    if names and spec.kind != "job":
        raise InvalidArgument(
            "buffers", "a worker codespec cannot declare buffers; buffers belong to jobs"
        )
    seen: set[str] = set()
    for group in ("inputs", "outputs"):
        for i, name in enumerate(getattr(spec.buffers, group)):
            path = f"buffers.{group}[{i}]"
            if not BUFFER_RE.match(name):
                raise InvalidArgument(
                    path, f"'{name}' is not a valid buffer name; use letters, digits, '-', '_'"
                )
            if name in seen:
                raise InvalidArgument(path, f"buffer '{name}' is declared twice")
            seen.add(name)


def validate(spec: Codespec) -> None:
    """Raise InvalidArgument (with the field path) if the codespec breaks a rule."""
    validate_name(spec.name)
    if spec.kind not in KINDS:
        raise InvalidArgument("kind", f"'{spec.kind}' is not a kind; use 'job' or 'worker'")
    if not spec.image or not spec.image.strip():
        raise InvalidArgument("image", "an image is required, e.g. localhost/myimage:1")
    if any(ch.isspace() for ch in spec.image):
        raise InvalidArgument("image", f"'{spec.image}' contains whitespace")
    for key in spec.env:
        if not ENV_NAME_RE.match(key):
            raise InvalidArgument(f"env.{key}", f"'{key}' is not a valid environment variable name")
    _validate_resources(spec.resources)
    if spec.max_replicas is not None and not 1 <= spec.max_replicas <= MAX_DECLARED_REPLICAS:
        raise InvalidArgument(
            "maxReplicas", f"must be between 1 and {MAX_DECLARED_REPLICAS}, got {spec.max_replicas}"
        )
    _validate_endpoints(spec)
    _validate_buffers(spec)


def normalize(spec: Codespec) -> Codespec:
    """Canonical form: sorted maps and buffer lists, empty strings as None.

    Normalising never changes meaning: `equality_key(normalize(s)) == equality_key(s)`.
    """
    res = spec.resources

    def clean(q: Quantities) -> Quantities:
        return Quantities(
            cpu=(q.cpu or "").strip() or None, memory=(q.memory or "").strip() or None
        )

    return replace(
        spec,
        working_dir=spec.working_dir or None,
        env=dict(sorted(spec.env.items())),
        endpoints=dict(sorted(spec.endpoints.items())),
        buffers=Buffers(tuple(sorted(spec.buffers.inputs)), tuple(sorted(spec.buffers.outputs))),
        resources=Resources(
            clean(res.requests), clean(res.limits), res.gpu, (res.shm or "").strip() or None
        ),
    )


def _quantity_value(text: str | None) -> Decimal | None:
    return None if text is None or not text.strip() else parse_quantity(text).normalize()


def equality_key(spec: Codespec) -> tuple[Any, ...]:
    """Everything that gives a codespec its meaning, in a comparable form.

    Name, version and creation time are identity, not content, so they are left out.
    """
    res = spec.resources
    return (
        spec.kind,
        spec.image,
        tuple(spec.command),
        tuple(spec.args),
        spec.working_dir or None,
        tuple(sorted(spec.env.items())),
        tuple(_quantity_value(q) for q in (res.requests.cpu, res.requests.memory)),
        tuple(_quantity_value(q) for q in (res.limits.cpu, res.limits.memory)),
        res.gpu,
        _quantity_value(res.shm),
        spec.max_replicas,
        tuple(sorted(spec.buffers.inputs)),
        tuple(sorted(spec.buffers.outputs)),
        tuple(sorted(spec.endpoints.items())),
    )


def same_content(a: Codespec, b: Codespec) -> bool:
    """True if creating `b` after `a` must not add a version."""
    return equality_key(a) == equality_key(b)


REF_RE = re.compile(r"^(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]+))?$")


def parse_reference(ref: str, path: str = "codespec") -> tuple[str, int | None]:
    """Split `name` or `name/versions/N` into (name, version or None)."""
    match = REF_RE.match(ref.strip())
    if not match:
        raise InvalidArgument(
            path, f"'{ref}' is not a codespec reference; use 'name' or 'name/versions/N'"
        )
    validate_name(match["name"], path)
    version = int(match["version"]) if match["version"] else None
    if version is not None and not 1 <= version <= INT32_MAX:
        raise InvalidArgument(path, f"version {version} is out of range; versions start at 1")
    return match["name"], version


def to_document(spec: Codespec) -> dict[str, Any]:
    """The codespec's content as a JSON-ready dict with Tyger's camelCase names."""
    res = spec.resources
    doc: dict[str, Any] = {"kind": spec.kind, "image": spec.image}
    if spec.command:
        doc["command"] = list(spec.command)
    if spec.args:
        doc["args"] = list(spec.args)
    if spec.working_dir:
        doc["workingDir"] = spec.working_dir
    if spec.env:
        doc["env"] = dict(spec.env)
    resources: dict[str, Any] = {}
    for group_name, group in (("requests", res.requests), ("limits", res.limits)):
        values = {k: v for k, v in (("cpu", group.cpu), ("memory", group.memory)) if v}
        if values:
            resources[group_name] = values
    if res.gpu:
        resources["gpu"] = res.gpu
    if res.shm:
        resources["shm"] = res.shm
    if resources:
        doc["resources"] = resources
    if spec.max_replicas is not None:
        doc["maxReplicas"] = spec.max_replicas
    if spec.buffers.inputs or spec.buffers.outputs:
        doc["buffers"] = {
            "inputs": list(spec.buffers.inputs),
            "outputs": list(spec.buffers.outputs),
        }
    if spec.endpoints:
        doc["endpoints"] = dict(spec.endpoints)
    return doc


def from_document(
    name: str, doc: dict[str, Any], version: int = 0, created_at: datetime | None = None
) -> Codespec:
    """Inverse of `to_document` (the store's trusted format; not user input)."""
    res = doc.get("resources", {})
    req = res.get("requests", {})
    lim = res.get("limits", {})
    buffers = doc.get("buffers", {})
    return Codespec(
        name=name,
        kind=doc.get("kind", "job"),
        image=doc["image"],
        command=tuple(doc.get("command", ())),
        args=tuple(doc.get("args", ())),
        working_dir=doc.get("workingDir"),
        env=dict(doc.get("env", {})),
        resources=Resources(
            Quantities(req.get("cpu"), req.get("memory")),
            Quantities(lim.get("cpu"), lim.get("memory")),
            gpu_count(res.get("gpu", 0)),
            res.get("shm"),
        ),
        max_replicas=doc.get("maxReplicas"),
        buffers=Buffers(tuple(buffers.get("inputs", ())), tuple(buffers.get("outputs", ()))),
        endpoints={k: int(v) for k, v in doc.get("endpoints", {}).items()},
        version=version,
        created_at=created_at,
    )
