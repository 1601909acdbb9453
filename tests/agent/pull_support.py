"""What the pull tests share: the image they pull, state names, an auth file,
StartContainer fields and the states a container went through."""

from __future__ import annotations

import base64
import json

from muster.v1 import agent_pb2, run_pb2

PULLING = run_pb2.CONTAINER_STATE_PULLING
CREATING = run_pb2.CONTAINER_STATE_CREATING
RUNNING = run_pb2.CONTAINER_STATE_RUNNING
FAILED = run_pb2.CONTAINER_STATE_FAILED
REMOVED = run_pb2.CONTAINER_STATE_REMOVED
IMAGE = "reg.example:5000/team/app:1"


def auth_json(entries: dict[str, tuple[str, str]]) -> bytes:
    """A containers-auth.json with ``registry -> (user, password)``."""
    return json.dumps(
        {
            "auths": {
                key: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                for key, (u, p) in entries.items()
            }
        }
    ).encode()


def start_fields(run_id: int, replica: int = 0, **extra: object) -> dict[str, object]:
    """StartContainer fields for job replica ``replica`` of ``IMAGE``."""
    fields: dict[str, object] = {
        "run_id": run_id,
        "role": run_pb2.REPLICA_ROLE_JOB,
        "replica": replica,
        "container_name": f"muster-run-{run_id}-job-{replica}",
        "image": IMAGE,
        "pull_policy": run_pb2.PULL_POLICY_MISSING,
    }
    fields.update(extra)
    return fields


def states(stream_statuses: list[agent_pb2.ContainerStatus], name: str) -> list[str]:
    """State names of ``name``'s statuses, consecutive repeats folded."""
    out: list[str] = []
    for s in stream_statuses:
        if s.container_name == name:
            label = run_pb2.ContainerState.Name(s.state).removeprefix("CONTAINER_STATE_")
            if not out or out[-1] != label:
                out.append(label)
    return out
