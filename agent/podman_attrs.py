"""Decoding Podman's container JSON (inspect and list forms) into ContainerInfo.

Separate from the runtime so the (version-sensitive) shapes of Podman's JSON
live in one place and can be unit-tested without a Podman socket.

Digests: a status carries the container's ``ImageDigest``, which is the
image's ``Digest``: the digest of the manifest the image was first stored
under. For an image pulled from a registry onto a node that did not have it,
that is the registry's manifest digest (what ``podman push --digestfile``
prints). ``RepoDigests`` cannot do better: Podman lists every manifest digest
of an image under every one of its names, so when the same image (same id)
was stored earlier from another manifest (built here, then pushed, which
re-encodes the manifest), the registry's digest cannot be told apart there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.runtime import (
    LABEL_NODE,
    ContainerInfo,
    ImageSummary,
    PullProgress,
    State,
    identity_from_labels,
)

_STATES: dict[str, State] = {
    "configured": "creating",
    "created": "creating",
    "initialized": "creating",
    "running": "running",
    "paused": "running",
    "stopping": "running",
    "exited": "exited",
    "stopped": "exited",
    "removing": "exited",
}


def podman_state(status: str) -> State:
    """Map a Podman state to the agent's; anything unexpected is ``failed``."""
    return _STATES.get(status.lower(), "failed")


RESET_MESSAGE = (
    "container was reset by a restart of its host (it had started before; "
    "muster never starts a container twice)"
)


def _reset(status: str, started: bool) -> bool:
    """A container that ran, then came back as created/configured: the host
    rebooted (Podman resets containers it finds after a restart)."""
    return status.lower() in ("configured", "created", "initialized") and started


def info_from_inspect(
    attrs: Mapping[str, Any], node: str, network_name: str
) -> ContainerInfo | None:
    """Decode ``podman inspect`` output; ``None`` unless it is a muster container of ``node``."""
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    ident = identity_from_labels(labels)
    if ident is None or labels.get(LABEL_NODE) != node:
        return None
    state_attrs = attrs.get("State") or {}
    status = str(state_attrs.get("Status", ""))
    state = podman_state(status)
    started = not str(state_attrs.get("StartedAt") or "").startswith(("0001-01-01", "None"))
    reset = _reset(status, started and bool(state_attrs.get("StartedAt")))
    settings = attrs.get("NetworkSettings") or {}
    network = (settings.get("Networks") or {}).get(network_name) or {}
    by_port: dict[int, int] = {}
    for key, bindings in (settings.get("Ports") or {}).items():
        for binding in bindings or []:
            if binding.get("HostPort"):
                by_port[int(str(key).split("/")[0])] = int(binding["HostPort"])
    return ContainerInfo(
        name=str(attrs.get("Name", "")).lstrip("/"),
        run_id=ident.run_id,
        role=ident.role,
        replica=ident.replica,
        state="failed" if reset else state,
        exit_code=int(state_attrs.get("ExitCode", 0)) if state == "exited" else None,
        hostname=ident.hostname or str(config.get("Hostname", "")),
        ip=network.get("IPAddress") or None,
        host_ports={n: by_port[p] for n, p in ident.endpoints.items() if p in by_port},
        endpoints=ident.endpoints,
        generation=ident.generation,
        message=RESET_MESSAGE if reset else "",
        # The image's Digest: the manifest digest it was first stored under (for an
        # image pulled from a registry, the registry's manifest digest).
        image_digest=str(attrs.get("ImageDigest") or ""),
        cluster_id=ident.cluster_id,
    )


def info_from_list(attrs: Mapping[str, Any]) -> ContainerInfo | None:
    """Decode one ``podman ps`` (libpod list) entry; the list result carries no IP."""
    ident = identity_from_labels(attrs.get("Labels") or {})
    if ident is None:
        return None
    names = attrs.get("Names") or [""]
    status = str(attrs.get("State", ""))
    state = podman_state(status)
    reset = _reset(status, int(attrs.get("StartedAt") or 0) > 0)
    by_port = {
        int(p["container_port"]): int(p["host_port"])
        for p in attrs.get("Ports") or []
        if p.get("host_port")
    }
    return ContainerInfo(
        name=str(names[0]),
        run_id=ident.run_id,
        role=ident.role,
        replica=ident.replica,
        exit_code=int(attrs.get("ExitCode", 0)) if state == "exited" else None,
        hostname=ident.hostname,
        ip=None,
        host_ports={n: by_port[p] for n, p in ident.endpoints.items() if p in by_port},
        endpoints=ident.endpoints,
        generation=ident.generation,
        state="failed" if reset else state,
        message=RESET_MESSAGE if reset else "",
        cluster_id=ident.cluster_id,
    )


def image_summary(attrs: Mapping[str, Any]) -> ImageSummary:
    """Decode one libpod image list entry."""
    return ImageSummary(
        tags=tuple(str(t) for t in attrs.get("RepoTags") or ()),
        digest=str(attrs.get("Digest") or ""),
        size_bytes=int(attrs.get("Size") or 0),
    )


class PullStream:
    """Decodes the JSON objects of libpod's ``POST /images/pull`` stream.

    Podman 4.3 sends ``{"stream": "Copying blob sha256:..."}`` text lines, then
    ``{"images": [...], "id": ID}`` or ``{"error": "..."}``: no byte counts. Objects
    with a Docker-style ``progressDetail`` (``current``/``total`` per layer
    ``id``), as the compat API sends, are summed into a :class:`PullProgress`,
    so a Podman that reports bytes is shown without further changes.
    """

    def __init__(self) -> None:
        """Nothing seen yet."""
        self.error: str | None = None
        self.image_id: str | None = None
        self._layers: dict[str, tuple[int, int]] = {}

    def feed(self, obj: Any) -> PullProgress | None:
        """Take one object; return the new progress when it carried any."""
        if not isinstance(obj, dict):
            return None
        if obj.get("error"):
            self.error = str(obj["error"])
            return None
        if "images" in obj and obj.get("id"):
            self.image_id = str(obj["id"])
            return None
        detail = obj.get("progressDetail")
        if isinstance(detail, dict) and obj.get("id") and detail.get("total"):
            try:
                current, total = int(detail.get("current") or 0), int(detail["total"])
            except (TypeError, ValueError):
                return None
            self._layers[str(obj["id"])] = (min(current, total), total)
            return PullProgress(
                sum(c for c, _ in self._layers.values()),
                sum(t for _, t in self._layers.values()),
            )
        return None
