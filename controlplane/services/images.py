"""Warming nodes with images and asking what they have: one request per
node over its agent stream, answers matched to requests by id.

Every node asked gets exactly one result: its answer, or an error when it
did not answer in time or its stream ended first. Nothing waits longer than
the timeout, whatever the nodes do.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Protocol, TypeVar, cast

from controlplane.core.containers import credentials_for
from controlplane.core.errors import FailedPrecondition, InvalidArgument
from controlplane.core.images import (
    Credential,
    NodeImages,
    NodePull,
    PullPolicy,
    check_image,
)
from controlplane.core.nodes import Node
from controlplane.services.orchestrator import AgentLink, PullOrder

log = logging.getLogger(__name__)
Result = NodePull | NodeImages
_R = TypeVar("_R", NodePull, NodeImages)


class Agents(Protocol):
    """What the service needs from the orchestrator."""

    def ready_agents(self, pool: str = "") -> list[tuple[str, AgentLink]]:
        """Ready, connected nodes (of a pool) and their links."""

    def agent_of(self, name: str) -> tuple[Node, AgentLink | None]:
        """One known node and its link when Ready and connected."""


@dataclass
class _Waiter:
    node: str
    future: asyncio.Future[Result]
    missing: Callable[[str, str], Result]
    """The result that says why the node gave none."""
    link: AgentLink


class ImageService:
    """PullImage and ListImages across nodes."""

    def __init__(
        self,
        agents: Agents,
        credentials: Callable[[], Mapping[str, Credential]] = dict,
        pull_timeout: timedelta = timedelta(minutes=30),
        list_timeout: timedelta = timedelta(seconds=15),
    ) -> None:
        self._agents = agents
        self._credentials = credentials
        self.pull_timeout = pull_timeout
        self.list_timeout = list_timeout
        self._waiting: dict[str, _Waiter] = {}

    async def pull(
        self, image: str, pool: str, policy: PullPolicy, within: float | None = None
    ) -> list[NodePull]:
        """Pull `image` onto every Ready node of `pool` ("" for all); one result per node."""
        check_image(image)
        if policy == "never":
            raise InvalidArgument(
                "policy", "a pull with policy never pulls nothing; use missing or always"
            )
        targets = self._agents.ready_agents(pool)
        if not targets:
            where = f"in pool {pool}" if pool else "in the cluster"
            raise FailedPrecondition(
                f"there is no Ready node {where}; `muster node list` shows them"
            )
        creds = credentials_for(image, policy, self._credentials())
        results = await self._ask(
            targets,
            lambda link, rid: link.pull_image(PullOrder(rid, image, policy, creds)),
            _pull_error,
            self._limit(within, self.pull_timeout),
        )
        failed = sum(1 for r in results if r.error)
        log.info(
            "event=image_pull image=%s pool=%s nodes=%d failed=%d",
            image,
            pool or "*",
            len(results),
            failed,
        )
        return results

    async def list(self, node: str = "", within: float | None = None) -> builtins.list[NodeImages]:
        """The images of every Ready node, or of one node (which must be known)."""
        if node:
            known, link = self._agents.agent_of(node)
            if link is None:
                why = f"node {node} is not connected (status {known.status})"
                return [NodeImages(node, error=why)]
            targets = [(node, link)]
        else:
            targets = self._agents.ready_agents()
        results = await self._ask(
            targets,
            lambda link, rid: link.list_images(rid),
            _list_error,
            self._limit(within, self.list_timeout),
        )
        return results

    @staticmethod
    def _limit(within: float | None, default: timedelta) -> float:
        """Seconds to wait: the caller's time left, at most the service's limit."""
        ceiling = default.total_seconds()
        return ceiling if within is None else max(0.1, min(within, ceiling))

    async def _ask(
        self,
        targets: builtins.list[tuple[str, AgentLink]],
        send: Callable[[AgentLink, str], None],
        missing: Callable[[str, str], _R],
        wait: float,
    ) -> builtins.list[_R]:
        loop = asyncio.get_running_loop()
        asked: builtins.list[tuple[str, str]] = []
        results: dict[str, _R] = {}
        try:
            for node, link in targets:
                rid = secrets.token_hex(8)
                self._waiting[rid] = _Waiter(node, loop.create_future(), missing, link)
                try:
                    send(link, rid)
                except Exception as exc:  # a stream that is closing
                    self._waiting.pop(rid)
                    results[node] = missing(node, f"could not ask node {node}: {exc}")
                    continue
                asked.append((node, rid))
            futures = [self._waiting[rid].future for _, rid in asked]
            if futures:
                await asyncio.wait(futures, timeout=wait)
            for node, rid in asked:
                future = self._waiting[rid].future
                if future.done():
                    # answer() takes only a result of the kind asked for.
                    results[node] = cast(_R, future.result())
                else:
                    results[node] = missing(
                        node, f"node {node} did not answer within {_secs(wait)}"
                    )
        finally:
            for _, rid in asked:
                waiter = self._waiting.pop(rid, None)
                if waiter is not None and not waiter.future.done():
                    waiter.future.cancel()
        return [results[node] for node, _ in targets]

    def answer(self, node: str, request_id: str, result: Result) -> None:
        """A node answered: complete its request. An answer for a request that
        was not sent to this node, is over, or is of the other kind changes
        nothing."""
        waiter = self._waiting.get(request_id)
        if waiter is None or waiter.node != node:
            reason = "not_asked"
        elif waiter.future.done():
            reason = "answered"
        elif type(result) is not type(waiter.missing(node, "")):
            reason = "wrong_kind"
        else:
            waiter.future.set_result(replace(result, node=node))
            return
        log.warning(
            "event=image_answer_refused node=%s request=%s reason=%s",
            node,
            request_id[:32],
            reason,
        )

    def node_gone(self, node: str, link: AgentLink) -> None:
        """A node's stream (`link`) ended: the requests sent on it fail now
        instead of timing out."""
        for waiter in self._waiting.values():
            if waiter.node == node and waiter.link is link and not waiter.future.done():
                waiter.future.set_result(
                    waiter.missing(node, f"node {node} disconnected before answering")
                )


def _secs(seconds: float) -> str:
    """'3s' (whole seconds, as people give timeouts), '0.4s' below one second."""
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"


def _pull_error(node: str, error: str) -> NodePull:
    return NodePull(node, error=error)


def _list_error(node: str, error: str) -> NodeImages:
    return NodeImages(node, error=error)
