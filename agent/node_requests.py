"""Answers to the control plane's image requests to a node: pull an image, list images.

Each answer is built in full, errors included, so the caller sends exactly
one reply per request and a failure never ends the stream.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from agent.logutil import log
from agent.messages import ImagesAnswer, PullAnswer, PullRequest
from agent.pulls import Puller
from agent.runtime import Runtime, RuntimeFailure

_log = logging.getLogger(__name__)


async def answer_pull(puller: Puller, node: str, request: PullRequest) -> PullAnswer:
    """Pull ``request.image`` as its policy says: the digest, or what went wrong."""
    answer = PullAnswer(request.request_id, request.image)
    if not request.image.strip():
        return replace(answer, error=f"PullImage needs an image (node '{node}')")
    try:
        outcome = await puller.ensure(request.image, request.policy, request.credentials)
        return replace(answer, digest=outcome.digest, pulled=outcome.pulled)
    except RuntimeFailure as exc:
        return replace(answer, error=str(exc))
    except Exception as exc:  # report, never crash
        return replace(answer, error=f"{type(exc).__name__}: {exc}")


async def answer_images(runtime: Runtime, request_id: str) -> ImagesAnswer:
    """The node's images (none when the runtime cannot list them: the answer still goes)."""
    try:
        images = await runtime.list_images()
    except Exception as exc:
        log(_log, logging.WARNING, "list_images_failed", error=exc)
        images = []
    return ImagesAnswer(request_id, tuple(images))
