"""Rendering resources for people (tables) and machines (JSON/YAML, Tyger camelCase)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

FORMATS = ("table", "json", "yaml")


def enum_text(value: str) -> str:
    """`CODESPEC_KIND_WORKER` -> `worker`; `RUN_STATUS_PENDING` -> `Pending`."""
    for prefix, style in (
        ("CODESPEC_KIND_", str.lower),
        ("RUN_STATUS_", str.capitalize),
        ("NODE_STATUS_", lambda s: "".join(p.capitalize() for p in s.split("_"))),
        ("CONTAINER_STATE_", str.lower),
        ("REPLICA_ROLE_", str.lower),
        ("NETWORK_MODE_", lambda s: s.lower().replace("_", "-")),
        ("LOG_STREAM_", str.lower),
        ("PULL_POLICY_", str.lower),
    ):
        if value.startswith(prefix):
            return style(value[len(prefix) :])
    return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v != {}}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and value.isupper() and "_" in value:
        return enum_text(value)
    return value


def to_dict(msg: Message) -> dict[str, Any]:
    """Protobuf message -> dict with camelCase names and readable enum values."""
    return _clean(json_format.MessageToDict(msg, preserving_proto_field_name=False))


def dump(data: Any, fmt: str) -> str:
    """Serialize for -o json / -o yaml."""
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def human_cpu(millis: int) -> str:
    """Millicores for a table cell: 1500 -> 1.5, 250 -> 250m."""
    return (
        f"{millis // 1000}"
        if millis % 1000 == 0
        else (f"{millis / 1000:g}" if millis % 100 == 0 else f"{millis}m")
    )


def human_memory(value: int) -> str:
    """Bytes for a table cell, with binary suffixes."""
    for suffix, unit in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= unit:
            text = f"{value / unit:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(value)


def human_bytes(value: int) -> str:
    """Bytes for progress lines and tables, with decimal units as registries
    and Podman print them: 45 MB, 1.2 GB, 512 B."""
    for suffix, unit in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if value >= unit:
            number = value / unit
            text = f"{number:.0f}" if number >= 10 else f"{number:.1f}".removesuffix(".0")
            return f"{text} {suffix}"
    return f"{value} B"


def when(ts: Timestamp) -> str:
    """A timestamp as `2026-11-30T12:00:00Z`, or `-` when it is unset."""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts.seconds else "-"
