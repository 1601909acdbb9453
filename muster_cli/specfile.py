"""Strict reading of Tyger-style YAML spec files.

Unknown fields are rejected with their path (and a suggestion), so a typo such
as `resources.request` is caught before anything is sent to the server.
"""

from __future__ import annotations

import difflib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from muster.common.timespan import TimeSpanError, timespan_seconds
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import run_pb2 as rpb


class SpecError(ValueError):
    """The file is unreadable, not YAML, or not shaped like a spec."""


STR = "string"
INT = "integer"
SCALAR = "scalar"  # quantities and env values: numbers are accepted and kept as text
COUNT = "count"  # a whole number, also written as a quantity string ("1", as Tyger writes GPUs)
ANY = "any"  # output-only fields (`version`, `createdAt`, `status`, ...): accepted, ignored

QUANTITIES = {"cpu": SCALAR, "memory": SCALAR}
SOCKET = {"port": INT, "inputBuffer": STR, "outputBuffer": STR}
CODESPEC_SCHEMA: dict[str, Any] = {
    "kind": STR,
    "name": STR,
    "version": ANY,
    "createdAt": ANY,
    "image": STR,
    "command": [STR],
    "args": [STR],
    "workingDir": STR,
    "env": {"*": SCALAR},
    "identity": STR,
    "resources": {"requests": QUANTITIES, "limits": QUANTITIES, "gpu": COUNT, "shm": SCALAR},
    "maxReplicas": INT,
    "buffers": {"inputs": [STR], "outputs": [STR]},
    "sockets": [SOCKET],
    "endpoints": {"*": INT},
}


def load_yaml(path: str) -> Any:
    """Read a YAML file, turning every failure into one clear SpecError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    import yaml  # only for the commands that read files: it slows every start

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path} is not valid YAML{where}: {problem}") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(value: Any, schema: Any, path: str) -> Any:
    """Validate `value` against `schema`; return it with scalars normalised to text."""
    where = path or "the document"
    if schema == ANY:
        return value
    if schema == STR:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {_type(value)}")
        return value
    if schema == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {_type(value)}")
        if not -(2**31) <= value < 2**31:
            raise SpecError(f"{where}: {value} is out of range")
        return value
    if schema == COUNT:
        return _count(value, where)
    if schema == SCALAR:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise SpecError(f"{where}: expected a string or number, got {_type(value)}")
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected a list, got {_type(value)}")
        return [check(v, schema[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {_type(value)}")
        out = {}
        for key, item in value.items():
            if item is None:  # `env:` with nothing after it: absent, as Tyger reads it
                continue
            if not isinstance(key, str):
                raise SpecError(f"{where}: keys must be strings, got {key!r}")
            sub = schema.get(key, schema.get("*"))
            if sub is None:
                hint = difflib.get_close_matches(key, list(schema), n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                known = ", ".join(k for k in schema)
                raise SpecError(
                    f"unknown field '{_join(path, key)}'{suggestion}; known fields: {known}"
                )
            out[key] = check(item, sub, _join(path, key))
        return out
    raise AssertionError(f"bad schema {schema!r}")  # pragma: no cover


def _count(value: Any, where: str) -> int:
    """A whole number given as an integer or as a quantity string ("1", "2", "1.0")."""
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite() or number != number.to_integral_value():
            raise SpecError(f"{where}: '{value}' is not a whole number")
        value = int(number)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: expected a whole number, got {_type(value)}")
    if not 0 <= value < 2**31:
        raise SpecError(f"{where}: {value} is out of range")
    return value


def _type(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


KINDS = {"job": cpb.CODESPEC_KIND_JOB, "worker": cpb.CODESPEC_KIND_WORKER}
NO_IDENTITY = (
    "muster has no workload identity provider (Tyger's identity needs a cloud one); "
    "give the container its credentials through env instead"
)
NO_SOCKETS = (
    "muster does not connect buffers to TCP sockets (Tyger's sockets); "
    "the job reads and writes its buffers itself"
)


def refuse_unsupported(doc: dict[str, Any], path: str = "") -> None:
    """Tyger fields muster cannot honour: harmless when empty, refused otherwise."""
    if doc.get("identity"):
        raise SpecError(f"{_join(path, 'identity')}: {NO_IDENTITY}")
    if doc.get("sockets"):
        raise SpecError(f"{_join(path, 'sockets')}: {NO_SOCKETS}")


def kind_from_text(text: str, where: str) -> int:
    """`job` or `worker` (any case, as Tyger lower-cases the flag) -> CodespecKind."""
    kind = KINDS.get(text.strip().lower())
    if kind is None:
        raise SpecError(f"{where}: '{text}' is not a kind; use job or worker")
    return kind


def codespec_from_dict(doc: dict[str, Any], path: str = "") -> cpb.Codespec:
    """A checked codespec document -> proto (kind text is checked here, the rest
    by the server). `version` and `createdAt` (output only) are ignored, as Tyger does."""
    doc = check(doc, CODESPEC_SCHEMA, path)
    refuse_unsupported(doc, path)
    msg = cpb.Codespec(name=doc.get("name", ""), image=doc.get("image", ""))
    if doc.get("kind"):
        msg.kind = kind_from_text(doc["kind"], _join(path, "kind"))  # type: ignore[assignment]  # the enum value kind_from_text checked
    msg.command.extend(doc.get("command", []))
    msg.args.extend(doc.get("args", []))
    msg.working_dir = doc.get("workingDir", "")
    msg.env.update(doc.get("env", {}))
    res = doc.get("resources", {})
    for group in ("requests", "limits"):
        for key, value in res.get(group, {}).items():
            setattr(getattr(msg.resources, group), key, value)
    msg.resources.gpu = res.get("gpu", 0)
    msg.resources.shm = res.get("shm", "")
    if "maxReplicas" in doc:
        msg.max_replicas = doc["maxReplicas"]
    msg.buffers.inputs.extend(doc.get("buffers", {}).get("inputs", []))
    msg.buffers.outputs.extend(doc.get("buffers", {}).get("outputs", []))
    msg.endpoints.update(doc.get("endpoints", {}))
    return msg


def load_codespec(path: str) -> cpb.Codespec:
    """Read a codespec file."""
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping of codespec fields at the top level")
    try:
        return codespec_from_dict(doc)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


# Tyger's RunCodeTarget; the job's `buffers` (parameter -> buffer id) become
# Run.buffers, and `resolvedCodespec` is muster's own output, ignored on the
# way back in.
TARGET_SCHEMA: dict[str, Any] = {
    "codespec": ANY,
    "nodePool": STR,
    "replicas": INT,
    "resolvedCodespec": ANY,
    "restartPolicy": STR,  # muster's: workers only, Never (default) or Always
}
JOB_TARGET_SCHEMA: dict[str, Any] = {
    **TARGET_SCHEMA,
    "tags": {"*": SCALAR},
    "bufferTtl": STR,
    "buffers": {"*": STR},
}
RUN_SCHEMA: dict[str, Any] = {
    # output only (what `run show` prints): accepted and ignored, as Tyger does
    "id": ANY,
    "eTag": ANY,
    "status": ANY,
    "statusReason": ANY,
    "runningCount": ANY,
    "createdAt": ANY,
    "startedAt": ANY,
    "finishedAt": ANY,
    "replicas": ANY,
    "events": ANY,
    # the run
    "kind": STR,
    "job": JOB_TARGET_SCHEMA,
    "worker": TARGET_SCHEMA,
    "cluster": STR,
    "timeoutSeconds": INT,
    "tags": {"*": SCALAR},
    "bufferAccessTtl": STR,
    "pullPolicy": STR,
}
PULL_POLICIES = {
    "missing": rpb.PULL_POLICY_MISSING,
    "always": rpb.PULL_POLICY_ALWAYS,
    "never": rpb.PULL_POLICY_NEVER,
}


def pull_policy_from_text(value: Any, where: str) -> int:
    """`pullPolicy: missing|always|never` -> PullPolicy (case does not matter)."""
    text = check(value, STR, where)
    policy = PULL_POLICIES.get(text.strip().lower())
    if policy is None:
        raise SpecError(f"{where}: '{text}' is not a pull policy; use missing, always or never")
    return policy


def time_span(value: str, where: str) -> str:
    """A Tyger TimeSpan ("1.00:00", "0.12:30:00"); "" means none."""
    if value:
        try:
            timespan_seconds(value)
        except TimeSpanError as exc:
            raise SpecError(f"{where}: {exc}") from None
    return value.strip()


def codespec_ref(value: Any, role: str, target: rpb.RunCodeTarget) -> None:
    """Tyger's codespec reference: a string (`name`, `name/versions/N`) or a
    codespec object. An object's name, version and createdAt are dropped and
    its kind is the role's, as Tyger's server does: it is inline."""
    where = f"{role}.codespec"
    if isinstance(value, str):
        target.codespec.named = value
    elif isinstance(value, dict) and set(value) == {"named"}:  # muster's older output
        target.codespec.named = check(value["named"], STR, f"{where}.named")
    elif isinstance(value, dict) and set(value) == {"inline"}:
        codespec_ref(value["inline"], role, target)
    elif isinstance(value, dict):
        inline = {k: v for k, v in value.items() if k not in ("name", "version", "createdAt")}
        inline["kind"] = role
        target.codespec.inline.CopyFrom(codespec_from_dict(inline, where))
    else:
        raise SpecError(f"{where}: expected a name or an inline codespec mapping")


def _target_from_dict(doc: Any, role: str) -> rpb.RunCodeTarget:
    schema = JOB_TARGET_SCHEMA if role == "job" else TARGET_SCHEMA
    doc = check(doc, schema, role)
    target = rpb.RunCodeTarget()
    if "codespec" in doc:
        codespec_ref(doc["codespec"], role, target)
    target.node_pool = doc.get("nodePool", "")
    if "replicas" in doc:
        target.replicas = doc["replicas"]
    target.tags.update(doc.get("tags", {}))
    target.buffer_ttl = time_span(doc.get("bufferTtl", ""), f"{role}.bufferTtl")
    if "restartPolicy" in doc:
        target.restart_policy = restart_policy(doc["restartPolicy"], f"{role}.restartPolicy")
    return target


RESTART_POLICIES = {"never": rpb.RESTART_POLICY_NEVER, "always": rpb.RESTART_POLICY_ALWAYS}


def restart_policy(text: str, where: str) -> Any:
    """Never or Always (any case) -> RestartPolicy."""
    found = RESTART_POLICIES.get(text.strip().lower())
    if found is None:
        raise SpecError(f"{where}: '{text}' is not a restart policy; use Never or Always")
    return found


RUN_KINDS = ("user", "")


def run_from_dict(doc: Any) -> rpb.Run:
    """A Tyger run document (a run file, or `run show` output) -> Run message."""
    doc = check(doc, RUN_SCHEMA, "")
    if doc.get("kind", "").strip().lower() not in RUN_KINDS:
        raise SpecError(
            f"kind: '{doc['kind']}' runs are Tyger's own; muster runs are all user runs "
            "(leave kind out or write user)"
        )
    run = rpb.Run()
    for role in ("job", "worker"):
        if role in doc:
            getattr(run, role).CopyFrom(_target_from_dict(doc[role], role))
    run.buffers.update(doc.get("job", {}).get("buffers", {}))
    if "timeoutSeconds" in doc:
        run.timeout_seconds = doc["timeoutSeconds"]
    if "pullPolicy" in doc:
        run.pull_policy = pull_policy_from_text(doc["pullPolicy"], "pullPolicy")  # type: ignore[assignment]  # the enum value the parser checked
    run.tags.update(doc.get("tags", {}))
    run.cluster = doc.get("cluster", "")
    run.buffer_access_ttl = time_span(doc.get("bufferAccessTtl", ""), "bufferAccessTtl")
    return run


def load_run(path: str) -> rpb.Run:
    """Read a run file (YAML or JSON, which is YAML too)."""
    try:
        return run_from_dict(load_yaml(path))
    except SpecError as exc:
        if str(exc).startswith(path):
            raise
        raise SpecError(f"{path}: {exc}") from None
