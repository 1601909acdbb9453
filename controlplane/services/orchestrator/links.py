"""What the orchestrator exchanges with agents: the link to one agent, a
report from it, an image pull order; placement generations; addresses."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

from controlplane.core.containers import ContainerSpec
from controlplane.core.images import Credential, PullPolicy
from controlplane.core.runs import Observation

log = logging.getLogger(__name__)


def is_ip(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def new_generation() -> int:
    """A placement generation: random, so that it also tells this database's
    placements from those of any other that reused the same run ids."""
    return secrets.randbits(62) + 1


class AgentLink(Protocol):
    """The orchestrator's handle on one connected agent (the gRPC adapter implements it)."""

    def start(self, spec: ContainerSpec) -> None:
        """Queue a container start (the agent makes it idempotent)."""

    def teardown(self, run_id: int) -> None:
        """Queue the removal of every container of a run on that node."""

    def close(self) -> None:
        """End the link's stream (a newer connection of the same node replaced it)."""

    def pull_image(self, order: PullOrder) -> None:
        """Queue a PullImage (muster image pull); the answer comes back by request id."""

    def list_images(self, request_id: str) -> None:
        """Queue a ListImages; the answer comes back by request id."""


@dataclass(frozen=True)
class PullOrder:
    """Pull an image onto one node, outside any run."""

    request_id: str
    image: str
    policy: PullPolicy
    credentials: tuple[Credential, ...] = ()


@dataclass(frozen=True)
class Report:
    """An agent's report about one container, in domain terms."""

    run_id: int
    observation: Observation
