"""Kubernetes quantity syntax (`1`, `500m`, `1.5`, `512Mi`, `4G`, `1e3`).

Quantities are compared by value, so `1` == `1000m` and `1Gi` == `1024Mi`.
CPU is measured in millicores and memory in bytes, both rounded up the way
Kubernetes rounds them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

_QUANTITY = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?[0-9]+))?$"
)


class QuantityError(ValueError):
    """The text is not a valid non-negative quantity."""


def parse_quantity(text: str) -> Decimal:
    """Return the exact value of a non-negative quantity."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise QuantityError(
            f"'{text}' is not a quantity; use a number with an optional suffix, "
            "like 1, 500m, 1.5, 512Mi or 4G"
        )
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex prevents this
        raise QuantityError(f"'{text}' is not a number") from exc
    if match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > 30:
            raise QuantityError(f"'{text}' has an exponent out of range")
        return number * (Decimal(10) ** exponent)
    return number * _SUFFIXES[match["suffix"] or ""]


def cpu_millis(text: str) -> int:
    """CPU quantity in millicores, rounded up (`0.1` -> 100, `1` -> 1000)."""
    return math.ceil(parse_quantity(text) * 1000)


def memory_bytes(text: str) -> int:
    """Memory quantity in bytes, rounded up (`1Ki` -> 1024)."""
    return math.ceil(parse_quantity(text))


def format_cpu(millis: int) -> str:
    """Human form of millicores: 1500 -> "1.5", 250 -> "250m"."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    if millis % 100 == 0:
        return f"{millis / 1000:g}"
    return f"{millis}m"


def format_memory(value: int) -> str:
    """Human form of bytes with binary suffixes: 1073741824 -> "1Gi"."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if value >= unit:
            return f"{value / unit:.1f}{suffix}"
    return str(value)
