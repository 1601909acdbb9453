"""Kubernetes-style quantities for the ``--cpus`` and ``--memory`` flags.

Operators already write ``500m``, ``1.5``, ``4Gi`` or ``512M`` in codespecs, so
the agent's capacity flags accept the same syntax.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def _split(text: str, what: str) -> tuple[Decimal, str]:
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"{what} '{text}' is not a quantity (examples: {_EXAMPLES[what]})")
    try:
        return Decimal(match.group(1)), match.group(2)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{what} '{text}' is not a number") from None


_EXAMPLES = {"cpu": "2, 1.5, 500m", "memory": "4Gi, 512Mi, 1G, 1073741824"}


def parse_cpu_millis(text: str) -> int:
    """``2`` -> 2000, ``1.5`` -> 1500, ``500m`` -> 500."""
    value, suffix = _split(text, "cpu")
    if suffix == "m":
        millis = value
    elif suffix == "":
        millis = value * 1000
    else:
        raise ValueError(f"cpu '{text}' has unknown suffix '{suffix}' (use cores or m)")
    return int(millis)


def parse_memory_bytes(text: str) -> int:
    """``4Gi`` -> 4294967296, ``1G`` -> 10**9, ``1024`` -> 1024."""
    value, suffix = _split(text, "memory")
    if suffix == "":
        factor = 1
    elif suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    else:
        raise ValueError(
            f"memory '{text}' has unknown suffix '{suffix}' (use Ki, Mi, Gi, Ti or k, M, G, T)"
        )
    return int(value * factor)
