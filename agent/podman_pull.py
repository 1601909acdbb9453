"""Image pulls through libpod's ``POST /images/pull``.

``policy=always`` (the agent decides whether to pull at all), ``tlsVerify``
as the agent says, and the credentials of that one pull in a single-registry
``X-Registry-Auth`` header, which Podman 4.3 keeps in memory (the multi-registry
form makes it write a temporary auth file; with no credentials the header is
left out, so Podman's own auth files apply). The reply streams JSON objects:
text lines, then the image id or an error; Podman 4.3 reports no byte counts
there, so progress stays 0/0 (see :class:`agent.podman_attrs.PullStream`). A
pull the agent gives up on (timeout, teardown) has its reply's socket shut
down, which ends the reading thread at once and makes Podman 4.3 abandon the
pull too (seen: its connection to a stalled registry closes within 0.3 s;
left alone, it waits on that registry indefinitely). The HTTP read timeout
bounds the thread should that fail.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import requests
from podman import PodmanClient
from podman.errors import APIError

from agent.podman_attrs import PullStream
from agent.podman_client import explain
from agent.runtime import ProgressCallback, PullError, RegistryAuth


def pull_sync(
    client: PodmanClient,
    image: str,
    auth: RegistryAuth | None,
    tls_verify: bool,
    report: ProgressCallback,
    limit_seconds: float | None,
    held: list[Any],
) -> str:
    """Pull ``image`` (blocking); return the id Podman names. The streaming reply
    goes into ``held`` while it is read, so another thread can cut it."""
    headers = {}
    if auth is not None:
        # One registry's credentials: Podman keeps them in memory for this pull.
        single = json.dumps({"username": auth.username, "password": auth.password})
        headers["X-Registry-Auth"] = base64.urlsafe_b64encode(single.encode()).decode()
    params = {"reference": image, "policy": "always", "tlsVerify": tls_verify}
    stream = PullStream()
    try:
        response = client.api.post(
            "/images/pull",
            params=params,
            headers=headers,
            stream=True,
            timeout=(10.0, limit_seconds) if limit_seconds is not None else (10.0, None),
        )
        held.append(response)
        try:
            if response.status_code >= 400:
                raise PullError(_error_text(response))
            _feed(stream, response, report)
        finally:
            response.close()
    except (requests.exceptions.RequestException, APIError) as exc:
        # podman-py wraps transport errors at request time in APIError; a read
        # timeout while streaming arrives as requests' ConnectionError.
        if "timed out" in str(exc).lower() and limit_seconds is not None:
            raise PullError(f"no word from Podman for {limit_seconds:g}s") from None
        raise PullError(f"Podman API: {explain(exc)}") from None
    if stream.error is not None:
        raise PullError(stream.error)
    if stream.image_id is None:
        raise PullError("Podman ended the pull without naming an image")
    return stream.image_id


def _feed(stream: PullStream, response: Any, report: ProgressCallback) -> None:
    """Every JSON object of the reply into ``stream``; progress to ``report``."""
    for line in response.iter_lines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if (p := stream.feed(obj)) is not None:
            report(p)


def _error_text(response: Any) -> str:
    """The message of a libpod error reply (``{"cause", "message", ...}``)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and (body.get("message") or body.get("cause")):
        return str(body.get("message") or body.get("cause"))
    return f"HTTP {response.status_code}"
