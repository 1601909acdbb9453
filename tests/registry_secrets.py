"""The forms a registry password takes on its way to Podman, and every form a
scan for leaked secrets must look for."""

from __future__ import annotations

import base64
import json


def registry_auth_header(username: str, password: str) -> str:
    """The ``X-Registry-Auth`` value the agent sends Podman with a pull
    (agent/podman_pull.py): base64url of ``{"username": ..., "password": ...}``."""
    single = json.dumps({"username": username, "password": password})
    return base64.urlsafe_b64encode(single.encode()).decode()


def secret_forms(username: str, password: str) -> list[str]:
    """Every form in which a registry password could leak into a log or an output:
    the password (also base64-encoded), ``user:password`` and its base64 (auth
    files' ``auth``), and the ``X-Registry-Auth`` header the agent sends Podman
    (:func:`registry_auth_header`; also in standard base64); each base64 form also
    without its padding."""
    pair = f"{username}:{password}"
    header = registry_auth_header(username, password)
    forms = [
        password,
        pair,
        base64.b64encode(pair.encode()).decode(),
        base64.b64encode(password.encode()).decode(),
        base64.urlsafe_b64encode(password.encode()).decode(),
        header,
        base64.b64encode(base64.urlsafe_b64decode(header)).decode(),
    ]
    return list(dict.fromkeys([*forms, *(f.rstrip("=") for f in forms)]))
