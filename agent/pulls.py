"""Getting images onto the node: pull policies, one pull per image, credentials.

The supervisor asks :class:`Puller` for a start's image before it creates the
container (and the connection asks it for PullImage); the runtime only
performs single pulls (:meth:`agent.runtime.Runtime.pull`).

* Policies: ``never`` (the image must be here: :class:`ImageNotFound` as
  before pulls existed), ``missing`` (pull only when absent), ``always``
  (pull at every start, so a moved tag is picked up).
* One pull per image reference at a time, however many replicas need it:
  later callers join the pull in flight and get its outcome. At most
  ``max_concurrent`` pulls run at once (``--max-concurrent-pulls``); each may
  take ``timeout`` seconds (``--pull-timeout``), counted once it runs.
* Credentials for the image's registry: those of the control plane
  (StartContainer/PullImage) win over the agent's ``--registry-auth-file``
  (containers-auth.json, re-read when it changes); with neither, Podman's own
  configuration applies. They go to Podman with the one pull only; they are
  never written anywhere or logged (:class:`~agent.runtime.RegistryAuth` hides
  the password from ``repr``).
* TLS: registries listed with ``--insecure-registry`` are pulled with
  ``tlsVerify=false``; every other one as the host's Podman configuration says
  (``/etc/containers/certs.d``). Podman 4.3 does *not* treat ``localhost`` or
  ``127.0.0.1`` as insecure: a plain-HTTP registry there needs the flag too.
* A failed pull raises :class:`PullFailed`, whose text names the image, the
  registry, the node and the cause.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.logutil import log
from agent.runtime import (
    ImageNotFound,
    PullError,
    PullPolicy,
    PullProgress,
    RegistryAuth,
    Runtime,
    RuntimeFailure,
)

_log = logging.getLogger(__name__)
DEFAULT_MAX_CONCURRENT_PULLS = 2
DEFAULT_PULL_TIMEOUT = 600.0
NEVER_HINT = (
    "the pull policy is never: build or load it there, or let the agent pull it "
    "(pull policy missing or always)"
)


class PullFailed(RuntimeFailure):
    """A pull failed; ``str()`` names the image, the registry, the node and the cause."""


class AuthFileError(ValueError):
    """The registry auth file cannot be used; ``str()`` never contains a secret."""


@dataclass(frozen=True)
class PullOutcome:
    """What ensuring an image achieved."""

    digest: str
    """Digest of the image now on the node (``""`` if it has none)."""
    pulled: bool
    """Whether a pull changed what the reference names (it was absent, or moved)."""


# -- image references ---------------------------------------------------------------


def split_reference(image: str) -> tuple[str, str, str]:
    """``(registry, repository path, tag-or-digest suffix)`` of an image reference.

    The registry is the first component when it looks like a host (has a dot
    or a port, or is ``localhost``), else ``""`` (a short name, which Podman
    resolves through registries.conf). The suffix keeps its ``:`` or ``@``.
    """
    name, at, digest = image.partition("@")
    suffix = at + digest
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, suffix = name[:colon], name[colon:] + suffix
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, suffix
    return "", name, suffix


def registry_of(image: str) -> str:
    """The registry ``host[:port]`` of ``image``; ``""`` for a short name."""
    return split_reference(image)[0]


def canonical(image: str) -> str:
    """``image`` with ``:latest`` when it names neither tag nor digest (the single-flight key)."""
    registry, path, suffix = split_reference(image)
    return f"{registry + '/' if registry else ''}{path}{suffix or ':latest'}"


def _normalize_registry(key: str) -> str:
    """An auth-file key or credential registry as ``host[:port][/path]``."""
    key = key.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    host, sep, path = key.partition("/")
    host = host.lower()  # host names are case-insensitive (the control plane sends lower case)
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
        if path in ("v1", "v2"):  # Docker's legacy https://index.docker.io/v1/
            sep, path = "", ""
    return host + sep + path


def match_credentials(image: str, entries: Iterable[RegistryAuth]) -> RegistryAuth | None:
    """The entry for ``image``: the longest of ``host/a/b``, ``host/a``, ``host`` present.

    Short names get none: Podman could send them to any search registry. The
    image's host is compared as the entries' are (``index.docker.io`` is
    ``docker.io``, case does not matter), as Podman reads references.
    """
    registry, path, _ = split_reference(image)
    if not registry:
        return None
    registry = _normalize_registry(registry)
    by_key = {_normalize_registry(e.registry): e for e in entries}
    parts = path.split("/")
    for n in range(len(parts), -1, -1):
        key = "/".join([registry, *parts[:n]])
        if key in by_key:
            return by_key[key]
    return None


# -- the auth file ---------------------------------------------------------------------


def parse_auth_file(data: bytes, source: str) -> tuple[RegistryAuth, ...]:
    """Entries of a containers-auth.json (``{"auths": {"host:port": {"auth": b64}}}``).

    ``auth`` is ``base64(user:password)``; entries with ``username`` and
    ``password`` instead are accepted too; entries with neither (say, only an
    identity token) are skipped.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{source}: not JSON ({type(exc).__name__})") from None
    auths = doc.get("auths", {}) if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise AuthFileError(f'{source}: expected {{"auths": {{"host:port": {{"auth": ...}}}}}}')
    entries: list[RegistryAuth] = []
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise AuthFileError(f"{source}: entry '{key}' is not an object")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except (binascii.Error, ValueError):
                raise AuthFileError(f"{source}: entry '{key}': auth is not base64") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise AuthFileError(f"{source}: entry '{key}': auth is not base64(user:password)")
        elif entry.get("username") and "password" in entry:
            username, password = str(entry["username"]), str(entry["password"])
        else:
            continue
        entries.append(RegistryAuth(_normalize_registry(str(key)), username, password))
    return tuple(entries)


class AuthFile:
    """A containers-auth.json, read at start and again whenever it changes."""

    def __init__(self, path: Path) -> None:
        """Read ``path`` now; :class:`AuthFileError` when it is unusable."""
        self.path = path
        self._stamp = self._stat()
        self._entries = self._read()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[RegistryAuth, ...]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise AuthFileError(f"{self.path}: {exc.strerror}") from None
        return parse_auth_file(data, str(self.path))

    def entries(self) -> tuple[RegistryAuth, ...]:
        """The current entries (re-read if the file changed; the last good ones on errors)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._entries = self._read()
                log(_log, logging.INFO, "registry_auth_file_reloaded", path=self.path)
            except AuthFileError as exc:
                log(_log, logging.WARNING, "registry_auth_file_unusable", error=exc)
        return self._entries


# -- messages ---------------------------------------------------------------------------

_SOURCE = re.compile(r"^initializing source \S+: ")
_MANIFEST = re.compile(r"^reading manifest \S+ in \S+: ")
_PING = re.compile(r'^pinging container registry \S+: (?:Get "[^"]*": )?')


def describe_cause(text: str) -> str:
    """Podman's pull error without the parts the message already says.

    ``initializing source docker://R/x:1: reading manifest 1 in R/x: manifest
    unknown: manifest unknown`` becomes ``manifest unknown``; a registry that
    cannot be reached becomes ``registry unreachable: <Go's network error>``, one
    whose certificate the node does not trust ``TLS verification failed: x509:
    ...`` with a hint.
    """
    text = " ".join(text.split())
    text = _SOURCE.sub("", text)
    text = _MANIFEST.sub("", text)
    ping = _PING.match(text)
    if ping:
        rest = text[ping.end() :]
        certificate = "x509:" in rest or "certificate" in rest
        text = ("TLS verification failed: " if certificate else "registry unreachable: ") + rest
    parts: list[str] = []
    for part in text.split(": "):  # "manifest unknown: manifest unknown" -> once
        if not parts or parts[-1] != part:
            parts.append(part)
    text = ": ".join(parts)
    if "server gave HTTP response to HTTPS client" in text:
        text += " (a plain-HTTP registry needs the agent flag --insecure-registry HOST:PORT)"
    elif text.startswith("TLS verification failed: "):
        text += (
            " (trust the registry's CA on the node: /etc/containers/certs.d/HOST:PORT/ca.crt; "
            "--insecure-registry HOST:PORT is for a test registry only)"
        )
    return text or "unknown error"


def failure_message(image: str, node: str, cause: str) -> str:
    """``pull of image 'I' from registry 'R' failed on node 'N': cause``."""
    registry = registry_of(image)
    source = (
        f"from registry '{registry}'"
        if registry
        else "(a short name: from the registries in Podman's registries.conf)"
    )
    return f"pull of image '{image}' {source} failed on node '{node}': {cause}"


def _seconds(value: float) -> str:
    return f"{value:g}"


# -- the puller -------------------------------------------------------------------------


@dataclass
class _Pull:
    """One pull in flight and the callers waiting for it."""

    image: str
    task: asyncio.Task[PullOutcome] | None = None
    progress: PullProgress = field(default_factory=PullProgress)
    watchers: list[Callable[[PullProgress], None]] = field(default_factory=list)
    last_report: float = 0.0
    flush: asyncio.TimerHandle | None = None


class Puller:
    """Ensures images per pull policy; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        node_name: str | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_PULLS,
        timeout: float = DEFAULT_PULL_TIMEOUT,
        auth_file: AuthFile | None = None,
        insecure_registries: Sequence[str] = (),
        progress_interval: float = 0.5,
    ) -> None:
        """``progress_interval``: least seconds between two progress reports of one pull."""
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._rt = runtime
        self._node = node_name or runtime.node_name
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._auth_file = auth_file
        self._insecure = {_normalize_registry(r) for r in insecure_registries}
        self._progress_interval = progress_interval
        self._inflight: dict[str, _Pull] = {}
        self.pulls_started = 0
        """Pulls this puller asked the runtime for (joined pulls count once)."""

    async def close(self) -> None:
        """Cancel the pulls in flight (agent shutdown)."""
        tasks = [p.task for p in self._inflight.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def in_flight(self) -> list[str]:
        """Images being pulled (or waiting for a slot) right now."""
        return list(self._inflight)

    async def ensure(
        self,
        image: str,
        policy: PullPolicy,
        credentials: Sequence[RegistryAuth] = (),
        on_pulling: Callable[[PullProgress], None] | None = None,
    ) -> PullOutcome:
        """Make ``image`` present as ``policy`` says; return its digest.

        ``on_pulling`` is called as soon as a pull is needed (0/0) and then with
        progress. Raises :class:`ImageNotFound` (policy never) or :class:`PullFailed`.
        Cancelling the caller leaves the pull running for the others.
        """
        if policy != "always":
            digest = await self._rt.image_digest(image)
            if digest is not None:
                return PullOutcome(digest, pulled=False)
            if policy == "never":
                raise ImageNotFound(image, self._node, NEVER_HINT)
        key = canonical(image)
        pull = self._inflight.get(key)
        if pull is None:
            pull = _Pull(image)
            pull.task = asyncio.get_running_loop().create_task(
                self._pull(pull, credentials), name=f"pull {image}"
            )
            self._inflight[key] = pull
            pull.task.add_done_callback(functools.partial(self._done, key, pull))
        else:
            log(_log, logging.INFO, "pull_joined", image=image)
        if on_pulling is not None:
            pull.watchers.append(on_pulling)
            on_pulling(pull.progress)
        assert pull.task is not None
        try:
            return await asyncio.shield(pull.task)
        finally:
            if on_pulling is not None and on_pulling in pull.watchers:
                pull.watchers.remove(on_pulling)

    def _done(self, key: str, pull: _Pull, task: asyncio.Task[PullOutcome]) -> None:
        if self._inflight.get(key) is pull:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter gets it through the shield

    def _report(self, pull: _Pull, progress: PullProgress) -> None:
        """New progress: tell the watchers now, or (throttled) the latest at the interval's end."""
        pull.progress = progress
        wait = pull.last_report + self._progress_interval - time.monotonic()
        if wait > 0:
            if pull.flush is None:
                pull.flush = asyncio.get_running_loop().call_later(wait, self._flush, pull)
            return
        self._flush(pull)

    def _flush(self, pull: _Pull) -> None:
        pull.flush = None
        if pull.task is not None and pull.task.done():
            return
        pull.last_report = time.monotonic()
        for watcher in list(pull.watchers):
            watcher(pull.progress)

    def credentials(
        self, image: str, explicit: Sequence[RegistryAuth] = ()
    ) -> tuple[RegistryAuth | None, str]:
        """The credentials a pull of ``image`` uses, and where they come from."""
        found = match_credentials(image, explicit)
        if found is not None:
            return found, "control-plane"
        if self._auth_file is not None:
            found = match_credentials(image, self._auth_file.entries())
            if found is not None:
                return found, "auth-file"
        return None, "none"

    async def _pull(self, pull: _Pull, explicit: Sequence[RegistryAuth]) -> PullOutcome:
        image = pull.image
        async with self._slots:
            auth, source = self.credentials(image, explicit)
            registry = registry_of(image)
            tls_verify = _normalize_registry(registry) not in self._insecure
            log(
                _log,
                logging.INFO,
                "pull_started",
                image=image,
                registry=registry or None,
                credentials=source,
                tls_verify=tls_verify,
            )
            began = time.monotonic()
            self.pulls_started += 1
            try:
                before = await self._rt.image_digest(image)
                async with asyncio.timeout(self.timeout):
                    digest = await self._rt.pull(
                        image,
                        auth=auth,
                        tls_verify=tls_verify,
                        progress=lambda p: self._report(pull, p),
                        limit_seconds=self.timeout + 5,
                    )
            except TimeoutError:
                cause = f"timed out after {_seconds(self.timeout)}s (--pull-timeout)"
            except PullError as exc:
                cause = describe_cause(str(exc))
            except Exception as exc:  # transport errors and the like: report, never crash
                cause = f"{type(exc).__name__}: {exc}"
            else:
                log(
                    _log,
                    logging.INFO,
                    "pull_done",
                    image=image,
                    digest=digest or None,
                    seconds=f"{time.monotonic() - began:.2f}",
                )
                return PullOutcome(digest, pulled=before != digest)
        message = failure_message(image, self._node, cause)
        log(_log, logging.WARNING, "pull_failed", image=image, error=message)
        raise PullFailed(message)
