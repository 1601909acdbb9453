"""Images on nodes, pure: pull policies, which registry an image reference
names, registry credentials, and what nodes answer about their images."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from controlplane.core.errors import InvalidArgument

PullPolicy = Literal["missing", "always", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("missing", "always", "never")
DEFAULT_PULL_POLICY: PullPolicy = "missing"

DOCKER_HUB = "docker.io"
# How Docker spells its own registry in older configurations and login commands.
_DOCKER_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?$"
)
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")
MAX_USERNAME = 256
MAX_PASSWORD = 16_384


def pull_policy(text: str, field_name: str = "pull_policy") -> PullPolicy:
    """'Always' -> 'always'; anything that is not a policy is InvalidArgument."""
    value = text.strip().lower()
    if value not in PULL_POLICIES:
        raise InvalidArgument(
            field_name, f"'{text}' is not a pull policy; use missing, always or never"
        )
    return value


def names_registry(image: str) -> bool:
    """Whether the reference names its registry: its first path component has a
    '.' or a ':' or is 'localhost' (`quay.io/x`, `localhost:5000/x`,
    `docker.io/library/busybox`). A short name (`busybox`, `team/app:1`) does
    not: Podman resolves it through registries.conf, which may list several
    search registries, so no login is sent with it (the agent would not use one:
    it never hands credentials to a pull that could reach another registry)."""
    head, sep, _ = image.partition("/")
    return bool(sep) and ("." in head or ":" in head or head == "localhost")


def registry_of(image: str) -> str:
    """The registry an image reference pulls from, the way Docker reads it: the
    first path component when :func:`names_registry`, otherwise Docker Hub
    (docker.io; Podman may try other search registries for a short name).

    `busybox`, `library/busybox:1` -> docker.io; `quay.io/x/y` -> quay.io;
    `localhost:5000/x` -> localhost:5000; `localhost/x` -> localhost.
    """
    if names_registry(image):
        return normalize_registry(image.partition("/")[0])
    return DOCKER_HUB


def normalize_registry(text: str) -> str:
    """A registry as the user may write it (`https://Quay.IO/`,
    `index.docker.io`) -> the host[:port] images name (`quay.io`, `docker.io`).
    Host names are case-insensitive, so they are compared in lower case."""
    value = text.strip()
    for scheme in ("https://", "http://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
    value = value.rstrip("/")
    if value.endswith("/v1") or value.endswith("/v2"):  # `docker login https://index.docker.io/v1/`
        value = value[:-3]
    value = value.lower()
    return DOCKER_HUB if value in _DOCKER_HUB_ALIASES else value


def check_registry(text: str, field_name: str = "registry") -> str:
    """A registry name for a login: normalized, host[:port], no path."""
    if not text or not text.strip():
        raise InvalidArgument(field_name, "a registry is required, e.g. registry.example:5000")
    value = normalize_registry(text)
    if "/" in value:
        raise InvalidArgument(
            field_name,
            f"'{text}' is not a registry: give host[:port] only, without a repository path",
        )
    if not (_HOST.match(value) or _IPV6.match(value)):
        raise InvalidArgument(field_name, f"'{text}' is not a registry host[:port]")
    return value


def check_image(image: str, field_name: str = "image") -> str:
    """An image reference someone asked to pull: present, no whitespace."""
    if not image or not image.strip():
        raise InvalidArgument(field_name, "an image is required, e.g. registry.example/team/app:1")
    if any(ch.isspace() for ch in image):
        raise InvalidArgument(field_name, f"'{image}' contains whitespace")
    return image


@dataclass(frozen=True)
class Credential:
    """What a node presents to one registry. The password never appears in a repr."""

    registry: str
    username: str
    password: str = field(repr=False)


def check_credential(registry: str, username: str, password: str) -> Credential:
    """Validate a login; returns it with the registry normalized."""
    reg = check_registry(registry)
    if not username:
        raise InvalidArgument("username", "a user name is required")
    if len(username) > MAX_USERNAME or any(ch.isspace() or ord(ch) < 32 for ch in username):
        raise InvalidArgument("username", "a user name is at most 256 characters, no whitespace")
    if not password:
        raise InvalidArgument("password", "a password (or token) is required")
    if len(password) > MAX_PASSWORD or any(ch in "\r\n\0" for ch in password):
        raise InvalidArgument(
            "password", "a password is one line of at most 16384 characters (no newline)"
        )
    return Credential(reg, username, password)


@dataclass(frozen=True)
class StoredLogin:
    """A registry login as the store keeps it: the password sealed (encrypted)."""

    registry: str
    username: str
    sealed: bytes = field(repr=False)
    updated_at: datetime | None = None


# -- what nodes answer -----------------------------------------------------------


@dataclass(frozen=True)
class NodePull:
    """One node's outcome of a pull (or why it has none)."""

    node: str
    digest: str = ""
    error: str = ""
    pulled: bool = False


@dataclass(frozen=True)
class NodeImage:
    """One image present on a node."""

    tags: tuple[str, ...]
    digest: str
    size_bytes: int = 0


@dataclass(frozen=True)
class NodeImages:
    """What one node has (or why it could not say)."""

    node: str
    images: tuple[NodeImage, ...] = ()
    error: str = ""
