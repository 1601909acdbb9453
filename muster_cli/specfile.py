"""Strict reading of Tyger-style YAML spec files.

Unknown fields are rejected with their path (and a suggestion), so a typo such
as `resources.request` is caught before anything is sent to the server.
"""

from __future__ import annotations

import difflib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from muster.v1 import codespec_pb2 as cpb
from muster.v1 import run_pb2 as rpb


class SpecError(ValueError):
    """The file is unreadable, not YAML, or not shaped like a spec."""


STR = "string"
INT = "integer"
SCALAR = "scalar"  # quantities and env values: numbers are accepted and kept as text
COUNT = "count"  # a whole number, also written as a quantity string ("1", as Tyger writes GPUs)

QUANTITIES = {"cpu": SCALAR, "memory": SCALAR}
CODESPEC_SCHEMA: dict[str, Any] = {
    "name": STR,
    "kind": STR,
    "image": STR,
    "command": [STR],
    "args": [STR],
    "workingDir": STR,
    "env": {"*": SCALAR},
    "resources": {"requests": QUANTITIES, "limits": QUANTITIES, "gpu": COUNT},
    "maxReplicas": INT,
    "buffers": {"inputs": [STR], "outputs": [STR]},
    "endpoints": {"*": INT},
}


def load_yaml(path: str) -> Any:
    """Read a YAML file, turning every failure into one clear SpecError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
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


def codespec_from_dict(doc: dict[str, Any], path: str = "") -> cpb.Codespec:
    """A checked codespec document -> proto (kind text is checked here, the rest by the server)."""
    doc = check(doc, CODESPEC_SCHEMA, path)
    msg = cpb.Codespec(name=doc.get("name", ""), image=doc.get("image", ""))
    if "kind" in doc:
        if doc["kind"] not in KINDS:
            raise SpecError(
                f"{_join(path, 'kind')}: '{doc['kind']}' is not a kind; use job or worker"
            )
        msg.kind = KINDS[doc["kind"]]
    msg.command.extend(doc.get("command", []))
    msg.args.extend(doc.get("args", []))
    msg.working_dir = doc.get("workingDir", "")
    msg.env.update(doc.get("env", {}))
    res = doc.get("resources", {})
    for group in ("requests", "limits"):
        for key, value in res.get(group, {}).items():
            setattr(getattr(msg.resources, group), key, value)
    msg.resources.gpu = res.get("gpu", 0)
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


TARGET_SCHEMA: dict[str, Any] = {"codespec": "codespec", "nodePool": STR, "replicas": INT}
RUN_SCHEMA: dict[str, Any] = {
    "job": TARGET_SCHEMA,
    "worker": TARGET_SCHEMA,
    "timeoutSeconds": INT,
    "tags": {"*": SCALAR},
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


def _target_from_dict(doc: Any, role: str) -> rpb.RunCodeTarget:
    if not isinstance(doc, dict):
        raise SpecError(f"{role}: expected a mapping with codespec, nodePool, replicas")
    target = rpb.RunCodeTarget()
    for key, value in doc.items():
        sub = TARGET_SCHEMA.get(key)
        if sub is None:
            hint = difflib.get_close_matches(key, list(TARGET_SCHEMA), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise SpecError(
                f"unknown field '{role}.{key}'{suggestion}; known fields: codespec, nodePool, "
                "replicas"
            )
        if key == "codespec":
            if isinstance(value, str):
                target.codespec.named = value
            elif isinstance(value, dict):
                inline = dict(value)
                inline.setdefault("kind", role)
                target.codespec.inline.CopyFrom(codespec_from_dict(inline, f"{role}.codespec"))
            else:
                raise SpecError(f"{role}.codespec: expected a name or an inline codespec mapping")
        elif key == "nodePool":
            target.node_pool = check(value, STR, f"{role}.nodePool")
        else:
            target.replicas = check(value, INT, f"{role}.replicas")
    return target


def run_from_dict(doc: Any) -> rpb.Run:
    """A Tyger run document -> Run message."""
    if not isinstance(doc, dict):
        raise SpecError("expected a mapping with job, worker, timeoutSeconds, tags, pullPolicy")
    run = rpb.Run()
    for key, value in doc.items():
        if key not in RUN_SCHEMA:
            hint = difflib.get_close_matches(key, list(RUN_SCHEMA), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise SpecError(
                f"unknown field '{key}'{suggestion}; known fields: {', '.join(RUN_SCHEMA)}"
            )
        if key in ("job", "worker"):
            getattr(run, key).CopyFrom(_target_from_dict(value, key))
        elif key == "timeoutSeconds":
            run.timeout_seconds = check(value, INT, key)
        elif key == "pullPolicy":
            run.pull_policy = pull_policy_from_text(value, key)  # type: ignore[assignment]
        else:
            run.tags.update(check(value, RUN_SCHEMA["tags"], "tags"))
    return run


def load_run(path: str) -> rpb.Run:
    """Read a run file."""
    try:
        return run_from_dict(load_yaml(path))
    except SpecError as exc:
        if str(exc).startswith(path):
            raise
        raise SpecError(f"{path}: {exc}") from None
