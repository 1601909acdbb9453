"""Container environment: Kubernetes-style `$(VAR)` expansion and the Tyger
discovery variables (docs/contract.md §2.3, §2.5)."""

from __future__ import annotations

import json
import re

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, variables: dict[str, str]) -> str:
    """Replace `$(VAR)` with its value; `$$` is a literal `$`; unknown refs stay as written."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return variables.get(name, match.group(0))

    return _REF.sub(sub, value)


def build_env(codespec_env: dict[str, str], discovery: dict[str, str]) -> dict[str, str]:
    """The final environment: codespec values expanded against the discovery
    variables and the other raw codespec values; discovery variables win."""
    context = {**codespec_env, **discovery}
    env = {key: expand(value, context) for key, value in codespec_env.items()}
    env.update(discovery)
    return env


def compact_json(values: list[str]) -> str:
    """Tyger's format: a compact JSON array, e.g. ["a:1","b:2"]."""
    return json.dumps(values, separators=(",", ":"))


def endpoint_variable(endpoint: str) -> str:
    """TYGER_<UPPERCASE NAME>_WORKER_ENDPOINT_ADDRESSES."""
    return f"TYGER_{endpoint.upper()}_WORKER_ENDPOINT_ADDRESSES"
