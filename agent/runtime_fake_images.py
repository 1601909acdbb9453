"""The fake node's image store and the one simulated registry of every fake host.

The base of :class:`agent.runtime_fake.FakeRuntime` (its images and pulls);
scripting, all synchronous, call from the test:

* ``remove_image(img)`` / ``add_image(img, digest=None)``: an image absent from
  / present on the node (``start`` of an absent one raises ImageNotFound). By
  default every image exists (``all_images_exist=True``), with the digest
  ``fake_digest(img)``.

Pulls (the agent pulls through ``pull`` before ``start``, see
:mod:`agent.pulls`). The fake has one simulated registry for every host:

* ``publish(img, digest=None) -> digest``: ``img`` is in the registry (a new
  digest each call unless given: publishing again is a re-push under the tag).
  ``unpublish(img)``. A pull of an image never published fails with
  ``manifest unknown``.
* ``require_credentials(registry, username, password)``: pulls from
  ``registry`` (``host[:port]``) fail with ``unauthorized: authentication
  required`` unless they bring exactly these.
* ``unreachable.add(registry)``: pulls from it fail with ``registry
  unreachable: ... connection refused``.
* ``pull_delay = seconds`` (every pull) or ``pull_delays[img] = seconds``;
  ``hold_pulls(img)``: pulls of ``img`` wait until ``release_pulls(img)``.
* ``fail_next_pull(img, cause)``: the next pull of ``img`` fails with ``cause``.
* ``pull_progress[img] = [(done, total), ...]``: progress reported during the pull.

Pull records: ``pull_counts[img]`` (a Counter of pulls asked of the runtime, by
reference as given), ``pulls`` (every :class:`FakePull`: image, the
credentials it carried, ``tls_verify``), ``pulls_in_flight`` and
``max_pulls_in_flight``. A successful pull makes the image present with the
published digest; containers report the digest of their image.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass

from agent.runtime import (
    ImageSummary,
    ProgressCallback,
    PullError,
    PullProgress,
    RegistryAuth,
)


def fake_digest(text: str) -> str:
    """A digest-shaped stand-in (``sha256:`` + 64 hex digits) derived from ``text``."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _registry(image: str) -> str:
    """Registry host of ``image`` ('' for a short name), as :mod:`agent.pulls` decides."""
    first, sep, _ = image.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else ""


def _key(image: str) -> str:
    """``image`` with ``:latest`` when it has neither tag nor digest."""
    last = image.rsplit("/", 1)[-1]
    return image if (":" in last or "@" in image) else image + ":latest"


@dataclass(frozen=True)
class FakePull:
    """One pull the fake runtime was asked for."""

    image: str
    auth: RegistryAuth | None
    tls_verify: bool


class FakeImages:
    """Images present on one fake node, and pulls from the simulated registry."""

    def __init__(self, *, all_images_exist: bool = True) -> None:
        """No image added; every image exists unless ``all_images_exist`` is False."""
        self.all_images_exist = all_images_exist
        self.images: set[str] = set()
        self.missing_images: set[str] = set()
        self.local_digests: dict[str, str] = {}
        """Digest of each image present (by reference); others get ``fake_digest``."""
        self.registry: dict[str, str] = {}
        """Published images (reference with tag) -> digest."""
        self.credentials: dict[str, tuple[str, str]] = {}
        self.unreachable: set[str] = set()
        self.pull_delay = 0.0
        self.pull_delays: dict[str, float] = {}
        self.pull_progress: dict[str, list[tuple[int, int]]] = {}
        self._pull_gates: dict[str, asyncio.Event] = {}
        self._fail_pull: dict[str, str] = {}
        self._publish_count = itertools.count(1)
        self.pull_counts: Counter[str] = Counter()
        self.pulls: list[FakePull] = []
        self.pulls_in_flight = 0
        self.max_pulls_in_flight = 0

    def add_image(self, image: str, digest: str | None = None) -> None:
        """Make ``image`` present (with ``digest``, default ``fake_digest(image)``)."""
        self.images.add(image)
        self.missing_images.discard(image)
        if digest is not None:
            self.local_digests[image] = digest

    def remove_image(self, image: str) -> None:
        """Make ``image`` absent."""
        self.images.discard(image)
        self.missing_images.add(image)
        self.local_digests.pop(image, None)

    def publish(self, image: str, digest: str | None = None) -> str:
        """Put ``image`` in the simulated registry (a re-push when already there)."""
        digest = digest or fake_digest(f"{image}#{next(self._publish_count)}")
        self.registry[_key(image)] = digest
        return digest

    def unpublish(self, image: str) -> None:
        """Take ``image`` out of the registry (pulls: manifest unknown)."""
        self.registry.pop(_key(image), None)

    def require_credentials(self, registry: str, username: str, password: str) -> None:
        """Pulls from ``registry`` need exactly these credentials."""
        self.credentials[registry] = (username, password)

    def hold_pulls(self, image: str) -> None:
        """Pulls of ``image`` wait until :meth:`release_pulls`."""
        self._pull_gates[image] = asyncio.Event()

    def release_pulls(self, image: str) -> None:
        """Let held pulls of ``image`` go on."""
        gate = self._pull_gates.pop(image, None)
        if gate is not None:
            gate.set()

    def fail_next_pull(self, image: str, cause: str) -> None:
        """The next pull of ``image`` fails with ``cause``."""
        self._fail_pull[image] = cause

    async def image_exists(self, image: str) -> bool:
        """Scripted image presence."""
        if image in self.missing_images:
            return False
        return self.all_images_exist or image in self.images

    async def image_digest(self, image: str) -> str | None:
        """Digest of a present image (scripted, else ``fake_digest``); ``None`` if absent."""
        if not await self.image_exists(image):
            return None
        return self.local_digests.get(image) or fake_digest(image)

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        tls_verify: bool = True,
        progress: ProgressCallback | None = None,
        limit_seconds: float | None = None,
    ) -> str:
        """Simulated pull from the simulated registry (see the module docstring)."""
        self.pull_counts[image] += 1
        self.pulls.append(FakePull(image, auth, tls_verify))
        self.pulls_in_flight += 1
        self.max_pulls_in_flight = max(self.max_pulls_in_flight, self.pulls_in_flight)
        try:
            registry = _registry(image)
            if registry in self.unreachable:
                raise PullError(
                    f"pinging container registry {registry}: dial tcp {registry}: "
                    "connect: connection refused"
                )
            required = self.credentials.get(registry)
            if required is not None and (
                auth is None or (auth.username, auth.password) != required
            ):
                raise PullError("unauthorized: authentication required")
            gate = self._pull_gates.get(image)
            if gate is not None:
                await gate.wait()
            steps = self.pull_progress.get(image, [])
            delay = self.pull_delays.get(image, self.pull_delay)
            for done, total in steps:
                if progress is not None:
                    progress(PullProgress(done, total))
                await asyncio.sleep(delay / (len(steps) + 1))
            await asyncio.sleep(delay / (len(steps) + 1) if steps else delay)
            if image in self._fail_pull:
                raise PullError(self._fail_pull.pop(image))
            digest = self.registry.get(_key(image))
            if digest is None:
                raise PullError("manifest unknown: manifest unknown")
            self.add_image(image, digest)
            return digest
        finally:
            self.pulls_in_flight -= 1

    async def list_images(self) -> list[ImageSummary]:
        """The images added or pulled (those of ``all_images_exist`` are not listed)."""
        return [
            ImageSummary(
                tags=(image,),
                digest=self.local_digests.get(image) or fake_digest(image),
                size_bytes=0,
            )
            for image in sorted(self.images)
        ]
