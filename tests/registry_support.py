"""A private, password-protected container registry for tests, on real Podman.

The fixture ``registry`` (imported by ``tests/conftest.py``, so every test
directory can use it) starts the CNCF distribution registry (Debian package
``docker-registry``, 2.8: ``docker-registry serve config.yml``) on
``127.0.0.1:<free port>`` (``start_registry(root, bind=ADDRESS)``: another
local address, e.g. the multi-host bed's bridge, ``bed.cp_address``, which the
bed's hosts reach) over plain HTTP (``tls=True``: HTTPS, with a certificate for
that address from a CA of its own, ``ca_cert``), with htpasswd (bcrypt) auth and its
storage in a temporary directory. Nothing is installed at test time:
``scripts/setup.sh`` installs ``docker-registry`` and ``apache2-utils``
(htpasswd); without them, or without Podman and the test images, the fixture
skips the test with the reason.

API (:class:`Registry`; the methods block, so from async code while an agent
runs in the same loop, call them through ``asyncio.to_thread``):

* ``host`` (``127.0.0.1:PORT``, or ``BIND:PORT``), ``username``, ``password``,
  ``ref("test/app:1")`` -> ``127.0.0.1:PORT/test/app:1``.
* ``push(source, "test/app:1", unique=True) -> digest``: pushes the local
  image ``source`` (e.g. ``localhost/muster-busybox:latest``) under that
  name and returns the registry's manifest digest (``podman push
  --digestfile``). ``unique=True`` first builds an image of its own (``FROM
  source`` plus a random label: a new image id, no new layers) and pushes that,
  then removes the local copy: a node pulling it really lacks it, and the
  image's digest after the pull is the registry's (Podman keeps the first
  manifest digest of an image id). ``unique=False`` pushes ``source`` itself.
* ``stop()`` / ``start()`` (same port, same storage), ``running``.
* ``log()``: the registry's log so far; ``requests()``: its access log as
  ``(method, path, status)``; ``manifest_gets("test/app:1")``: successful
  manifest GETs of that tag (one per pull; ``"test/app@sha256:..."``: of
  that digest); ``manifest_clients(name)``: the client address of each.
* ``secret_forms()``: every form of the password a scan for leaks must look
  for (also module-level ``secret_forms(username, password)``, from
  ``tests/registry_secrets.py`` with ``registry_auth_header``).
* ``write_auth_file(path, username=None, password=None)``: a containers-auth.json
  (``{"auths": {host: {"auth": base64(user:pass)}}}``) for ``--registry-auth-file``.
* ``forget(ref)``: make sure ``ref`` is not on this machine before a pull test
  (``podman rmi`` of the reference, ignoring "not known").
* Cleanup (always, also when the test fails): the registry process is stopped,
  containers made from images this fixture's registry delivered are removed,
  those images are removed (images that existed before the test only lose the
  registry's names), and its storage is deleted (its log stays in the
  temporary directory, for post-mortems).

``stalled_registry()`` (``tests/stalled_registry.py``) is a context manager
for a registry that accepts TCP connections and never answers (for pull
timeouts); it yields a
:class:`StalledRegistry` (``host``, ``accepted``, ``open_connections()``: those
whose client has not hung up yet).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.agent.podman_support import require_podman
from tests.registry_secrets import registry_auth_header as registry_auth_header
from tests.registry_secrets import secret_forms
from tests.registry_tls import write_tls
from tests.stalled_registry import StalledRegistry as StalledRegistry
from tests.stalled_registry import stalled_registry as stalled_registry

REGISTRY_BIN = "docker-registry"
HTPASSWD_BIN = "htpasswd"
PODMAN_BIN = "podman"
_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) ')
_CLIENT = re.compile(r"^(\S+) - ")  # the access log's first field: the client's address


def registry_skip_reason() -> str | None:
    """Why the registry fixture cannot run here, or ``None``."""
    missing = [b for b in (REGISTRY_BIN, HTPASSWD_BIN, PODMAN_BIN) if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run scripts/setup.sh)"
    return None


def _free_port(bind: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def _podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [PODMAN_BIN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed: {result.stderr.strip()}")
    return result


def _image_ids() -> set[str]:
    out = _podman("images", "-a", "--no-trunc", "--format", "{{.ID}}").stdout
    return {line.strip().removeprefix("sha256:") for line in out.splitlines() if line.strip()}


@dataclass
class Registry:
    """One registry process and what a test did with it (see the module docstring)."""

    root: Path
    port: int
    username: str = "muster"
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    proc: subprocess.Popen[bytes] | None = None
    images_before: set[str] = field(default_factory=set)
    bind: str = "127.0.0.1"
    """The local address it listens on."""
    tls: bool = False
    """HTTPS with a certificate for ``bind`` from a CA of its own (``ca_cert``)."""

    @property
    def host(self) -> str:
        """``BIND:PORT`` (``127.0.0.1:PORT``), as in image references."""
        return f"{self.bind}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the registry process is up."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The registry's log file (stdout and stderr, appended across restarts)."""
        return self.root / "registry.log"

    @property
    def ca_cert(self) -> Path:
        """The PEM of the CA that signed its certificate (with ``tls``), for
        ``/etc/containers/certs.d/HOST:PORT/ca.crt``."""
        return self.root / "tls" / "ca.crt"

    def ref(self, name: str) -> str:
        """``BIND:PORT/name``."""
        return f"{self.host}/{name}"

    def secret_forms(self) -> list[str]:
        """:func:`secret_forms` of this registry's credentials."""
        return secret_forms(self.username, self.password)

    # -- lifecycle ------------------------------------------------------------------------

    def _write_config(self) -> Path:
        (self.root / "data").mkdir(exist_ok=True)
        htpasswd = self.root / "htpasswd"
        if not htpasswd.exists():
            out = subprocess.run(
                [HTPASSWD_BIN, "-Bbn", self.username, self.password],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            htpasswd.write_text(out)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.bind}:{self.port}\n  secret: {secrets.token_hex(16)}\n"
            + (
                f"  tls:\n    certificate: {self.root / 'tls' / 'server.crt'}\n"
                f"    key: {self.root / 'tls' / 'server.key'}\n"
                if self.tls
                else ""
            )
            + f"auth:\n  htpasswd:\n    realm: muster-test\n    path: {htpasswd}\n"
        )
        if self.tls and not (self.root / "tls").exists():
            write_tls(self.root / "tls", self.bind)
        return config

    def start(self, within: float = 15.0) -> None:
        """Start (or start again) on the same port and storage; wait until it answers."""
        if self.running:
            return
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + within
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"registry exited with {self.proc.returncode}: {self.log()[-2000:]}"
                )
            try:
                if self.tls:
                    trust = ssl.create_default_context(cafile=str(self.ca_cert))
                    urllib.request.urlopen(f"https://{self.host}/v2/", timeout=1, context=trust)
                else:
                    urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"registry did not answer within {within}s: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (SIGTERM, SIGKILL if it lingers); its storage stays."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- content ----------------------------------------------------------------------------

    def push(self, source: str, name: str, *, unique: bool = True) -> str:
        """Push local ``source`` as ``name``; return the registry's manifest digest."""
        local = source
        if unique:
            tag = secrets.token_hex(6)
            local = f"localhost/muster-regtest-{tag}:latest"
            ctx = self.root / f"build-{tag}"
            ctx.mkdir()
            (ctx / "Containerfile").write_text(f"FROM {source}\nLABEL muster.test.unique={tag}\n")
            _podman("build", "--pull=never", "-q", "-t", local, str(ctx))
        digest_file = self.root / f"digest-{secrets.token_hex(4)}"
        try:
            _podman(
                "push",
                "-q",
                "--tls-verify=false",
                "--creds",
                f"{self.username}:{self.password}",
                "--digestfile",
                str(digest_file),
                local,
                self.ref(name),
            )
            return digest_file.read_text().strip()
        finally:
            if unique:
                _podman("rmi", local, check=False)
            digest_file.unlink(missing_ok=True)

    def write_auth_file(
        self, path: Path, username: str | None = None, password: str | None = None
    ) -> Path:
        """A containers-auth.json for this registry (this registry's credentials by default)."""
        user = self.username if username is None else username
        secret = self.password if password is None else password
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        path.chmod(0o600)
        return path

    # -- what happened ----------------------------------------------------------------------

    def log(self) -> str:
        """The registry's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request in the access log, in order."""
        return [
            (m.group(1), m.group(2), int(m.group(3)))
            for line in self.log().splitlines()
            if (m := _ACCESS.search(line))
        ]

    def manifest_gets(self, name: str) -> int:
        """Successful ``GET /v2/<repo>/manifests/<tag|digest>`` of ``name``
        (``repo:tag`` or ``repo@sha256:...``)."""
        return len(self.manifest_clients(name))

    def manifest_clients(self, name: str) -> list[str]:
        """The client address of each successful manifest GET of ``name``, in order."""
        repo, at, digest = name.partition("@")
        if not at:
            repo, _, digest = name.rpartition(":")
        wanted = ("GET", f"/v2/{repo}/manifests/{digest}", "200")
        clients = []
        for line in self.log().splitlines():
            m = _ACCESS.search(line)
            if m and m.groups() == wanted:
                client = _CLIENT.match(line)
                clients.append(client.group(1) if client else "")
        return clients

    # -- the machine's images ------------------------------------------------------------

    def forget(self, ref: str) -> None:
        """Make sure ``ref`` is not in local storage (before a pull test)."""
        _podman("rmi", "-i", ref, check=False)

    def _local_images(self) -> list[dict]:
        out = _podman("images", "-a", "--format", "json").stdout
        prefix = self.host + "/"
        mine = []
        for image in json.loads(out or "[]"):
            names = [*(image.get("Names") or []), *(image.get("History") or [])]
            if any(str(n).startswith(prefix) for n in names):
                mine.append(image)
        return mine

    def cleanup(self) -> None:
        """Stop the registry; remove what it delivered here (see the module docstring)."""
        try:
            self.stop()
        finally:
            prefix = self.host + "/"
            for image in self._local_images():
                image_id = str(image["Id"]).removeprefix("sha256:")
                if image_id in self.images_before:
                    for name in image.get("Names") or []:
                        if str(name).startswith(prefix):
                            _podman("untag", image_id, str(name), check=False)
                    continue
                users = _podman("ps", "-aq", "--filter", f"ancestor={image_id}", check=False)
                for container in users.stdout.split():
                    _podman("rm", "-f", "-t", "0", container, check=False)
                _podman("rmi", "-f", image_id, check=False)
            for path in [self.root / "data", *self.root.glob("build-*")]:
                shutil.rmtree(path, ignore_errors=True)  # the log stays, for post-mortems


def start_registry(root: Path, bind: str = "127.0.0.1", tls: bool = False) -> Registry:
    """Start a registry with its files under ``root``, listening on ``bind`` (a
    local address), over HTTPS with ``tls``; skips when it cannot run here."""
    reason = registry_skip_reason()
    if reason:
        pytest.skip(reason)
    require_podman()
    root.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken before the registry binds it
        reg = Registry(
            root=root, port=_free_port(bind), images_before=_image_ids(), bind=bind, tls=tls
        )
        try:
            reg.start()
            return reg
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start a registry: {last}")


@pytest.fixture
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A fresh password-protected registry on 127.0.0.1; everything removed afterwards."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.cleanup()
