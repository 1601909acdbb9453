"""Opaque page tokens. A token is bound to the query that produced it, so a
token reused with different filters is rejected instead of silently skipping."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from controlplane.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 4096
"""Tokens muster makes are far shorter; a longer one is not ours."""


def page_size(requested: int) -> int:
    """Apply the default and the cap; negative sizes are an error."""
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode(query: dict[str, Any], cursor: Any) -> str:
    """Token for the page after `cursor` of `query`."""
    raw = json.dumps({"q": query, "c": cursor}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, query: dict[str, Any]) -> Any:
    """The cursor inside `token`, or None for an empty token."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token", "the page token is malformed (too long)")
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor, token_query = body["c"], body["q"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument("page_token", "the page token is malformed") from None
    if token_query != json.loads(json.dumps(query)):
        raise InvalidArgument(
            "page_token", "the page token belongs to a query with other filters or order"
        )
    return cursor
