"""The multi-host test bed as a pytest fixture: `bed`, N simulated hosts on this machine.

Each host is a network namespace with its own address on a private /24, its own mount
namespace and its own Podman API service (see tests/multihost/bed.sh and docs/multihost.md).
The control plane, in the root namespace, listens on `bed.cp_address` (the bridge, .1).

    def test_something(bed):
        h1 = bed.hosts[0]                       # or bed["h1"]
        h1.url                                  # unix:///run/<prefix>-h1/podman.sock
        h1.podman("run", "-d", "localhost/muster-busybox:latest", "sleep", "60")
        h1.exec("python3", "-c", "...")         # a command in h1's namespaces
        bed.cut(h1); bed.heal(h1); bed.reboot(h1)
        bed.events(h1)                          # container create events since the bed came up

Needs root: without it (or without `ip netns`, nsenter, nft) the tests fail, on purpose (CI is
root, so there they must run). MUSTER_BED_HOSTS sets the number of hosts (default 3).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

BED_SH = Path(__file__).resolve().with_name("bed.sh")
# Prefix of the beds the fixtures make ("mbt" + 6 hex digits): beds left by killed test runs
# are recognised by it (and by their dead owner) and removed. Do not use it by hand.
FIXTURE_PREFIX = "mbt"


def _run(
    cmd: list[str], *, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise BedError(
            f"{' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''} failed "
            f"(exit {proc.returncode}): {detail[-1] if detail else 'no output'}",
            proc,
        )
    return proc


class BedError(RuntimeError):
    """A bed command failed; `.proc` holds its full output."""

    def __init__(self, message: str, proc: subprocess.CompletedProcess[str] | None = None):
        super().__init__(message)
        self.proc = proc


def bed_sh(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs tests/multihost/bed.sh ARGS."""
    return _run(["bash", str(BED_SH), *args], check=check, timeout=timeout)


@dataclass(frozen=True)
class Host:
    """One simulated host of the bed."""

    name: str  # h1, h2, ...
    address: str  # its address on the bed's /24 (publish ports here: -p ADDRESS:P:P)
    netns: str  # /run/netns/<prefix>-<name>
    mountns: str  # its mount namespace (private /run, /dev/shm, /etc/containers)
    socket: str  # its Podman API socket (path)
    url: str  # the same as a URL: `muster-agent --podman-url <url>`
    root: str  # podman --root
    runroot: str  # podman --runroot
    tmpdir: str  # podman --tmpdir
    network_config_dir: str  # podman --network-config-dir
    events_log: str
    bed: Bed = field(repr=False, compare=False)

    def nsenter(self, mount: bool = True) -> list[str]:
        """The command prefix that enters this host's network and (by default) mount
        namespaces. In its mount namespace a process sees the host's private /run, /dev/shm,
        /etc/containers and /etc/resolv.conf; everything else is the machine's."""
        ns = [f"--mount={self.mountns}"] if mount else []
        return ["nsenter", *ns, f"--net={self.netns}", "--"]

    def podman_cmd(self, *args: str) -> list[str]:
        """`podman` with this host's own --root/--runroot/--tmpdir/--network-config-dir,
        inside its namespaces. Never run podman with these flags outside them: the host's
        Podman keeps locks and network state in its private /dev/shm and /run."""
        return [
            *self.nsenter(),
            "podman",
            "--root",
            self.root,
            "--runroot",
            self.runroot,
            "--tmpdir",
            self.tmpdir,
            "--network-config-dir",
            self.network_config_dir,
            *args,
        ]

    def podman(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs this host's podman ARGS (text output); raises BedError if it fails."""
        return _run(self.podman_cmd(*args), check=check, timeout=timeout, input=input)

    def exec(
        self, *cmd: str, check: bool = True, timeout: float = 60, mount: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Runs CMD inside this host's network and (mount=True) mount namespaces."""
        return _run([*self.nsenter(mount), *cmd], check=check, timeout=timeout)

    def popen(self, *cmd: str, mount: bool = True, **kwargs: Any) -> subprocess.Popen[str]:
        """Starts CMD inside this host's namespaces, e.g. an agent:
        `h.popen("muster-agent", "--podman-url", h.url, ...)`: `cut` then applies to it and
        `reboot`/`down` kill it. Stop it yourself otherwise."""
        kwargs.setdefault("text", True)
        return subprocess.Popen([*self.nsenter(mount), *cmd], **kwargs)

    def cut(self) -> None:
        self.bed.cut(self)

    def heal(self) -> None:
        self.bed.heal(self)

    def reboot(self, graceful: bool = False) -> None:
        self.bed.reboot(self, graceful=graceful)


@dataclass
class Bed:
    """A running bed: `hosts`, `cp_address` (where the control plane listens), helpers."""

    prefix: str
    net: str  # e.g. 10.213.41.0/24
    cp_address: str  # the bridge address in the root namespace (.1)
    bridge: str
    hosts: list[Host]
    started: float  # time.time() when `up` began

    @classmethod
    def load(cls, prefix: str, started: float) -> Bed:
        data = json.loads(bed_sh("json", prefix).stdout)
        bed = cls(data["prefix"], data["net"], data["cp_address"], data["bridge"], [], started)
        bed.hosts = [Host(**h, bed=bed) for h in data["hosts"]]
        return bed

    def host(self, host: Host | str) -> Host:
        name = host.name if isinstance(host, Host) else host
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"bed {self.prefix} has no host {name!r}")

    __getitem__ = host

    def cut(self, host: Host | str) -> None:
        """Drops all IP traffic between the host (its containers included) and cp_address,
        both ways. Traffic between hosts and the Podman API (a unix socket) are unaffected."""
        bed_sh("cut", self.prefix, self.host(host).name)

    def heal(self, host: Host | str) -> None:
        bed_sh("heal", self.prefix, self.host(host).name)

    def reboot(self, host: Host | str, graceful: bool = False) -> None:
        """Power-loss reboot (graceful: `podman stop -a` first): every process of the host
        dies, its run state is wiped, its Podman service comes back. Containers that were
        running are "created" again (State.StartedAt keeps their last start)."""
        bed_sh("reboot", self.prefix, self.host(host).name, *(["--graceful"] if graceful else []))

    def status(self) -> str:
        return bed_sh("status", self.prefix, check=False).stdout

    def event_list(
        self, host: Host | str, event: str = "create", since: float | None = None
    ) -> list[dict[str, Any]]:
        """Container events of type EVENT from the host's Podman since SINCE (a time.time()
        value; default: when the bed came up). The events log survives `reboot`."""
        when = datetime.fromtimestamp(self.started if since is None else since, UTC)
        args = ["events", "--since", when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "--stream=false"]
        args += ["--filter", f"event={event}", "--filter", "type=container", "--format", "json"]
        out = self.host(host).podman(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, host: Host | str, event: str = "create", since: float | None = None) -> int:
        """How many container EVENT events (default: create) the host's Podman has logged."""
        return len(self.event_list(host, event, since))


def leftovers(prefix: str) -> list[str]:
    """Everything of bed PREFIX still on this machine (empty after `bed.sh down`)."""
    found: list[str] = []
    pat = re.compile(rf"^{re.escape(prefix)}-")
    netns = _run(["ip", "netns", "list"]).stdout.split("\n")
    found += [f"netns {line.split()[0]}" for line in netns if pat.match(line)]
    links = _run(["ip", "-o", "link", "show"]).stdout.splitlines()
    found += [f"link {line.split(': ')[1]}" for line in links if pat.match(line.split(": ")[1])]
    for base in ("/run", "/var/lib"):
        found += [f"dir {p}" for p in Path(base).glob(f"{prefix}-*")]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {m.split()[4]}" for m in mounts if f"/{prefix}-" in m.split()[4]]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if re.search(rf"/(run|var/lib)/{re.escape(prefix)}-", cmdline):
            found.append(f"process {proc.name}: {cmdline[:120]}")
    return found


def _owner() -> str:
    """PID and start time of this process: identifies the test run that owns a bed."""
    stat = Path("/proc/self/stat").read_text()
    return f"{os.getpid()} {stat.rsplit(')', 1)[1].split()[19]}"


def _owner_alive(owner: str) -> bool:
    try:
        pid, start = owner.split()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ValueError, OSError):
        return False
    return stat.rsplit(")", 1)[1].split()[19] == start


def reap_stale_beds() -> None:
    """Removes beds of earlier fixture runs whose pytest process is gone (killed runs)."""
    for line in bed_sh("list").stdout.splitlines():
        prefix, _n, _net, *owner = line.split()
        if prefix.startswith(FIXTURE_PREFIX) and not _owner_alive(" ".join(owner)):
            bed_sh("down", prefix, check=False)


def check_prerequisites() -> None:
    """pytest.fail (not skip: in CI these tests must run) when the bed cannot work here."""
    if os.geteuid() != 0:
        pytest.fail("the multi-host bed needs root (network and mount namespaces)", pytrace=False)
    missing = [
        t for t in ("ip", "nsenter", "unshare", "nft", "podman", "curl") if not shutil.which(t)
    ]
    if missing:
        pytest.fail(
            f"the multi-host bed needs {', '.join(missing)} (run scripts/setup.sh)", pytrace=False
        )
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        pytest.fail("`ip netns` does not work on this machine", pytrace=False)


def new_prefix() -> str:
    return f"{FIXTURE_PREFIX}{uuid.uuid4().hex[:6]}"


def start_bed(prefix: str, n: int) -> Bed:
    """`bed.sh up PREFIX N`. Call stop_bed(PREFIX) afterwards in any case (also if this
    fails or is interrupted: half a bed is still a bed)."""
    started = time.time()
    env = {**os.environ, "MUSTER_BED_OWNER": _owner()}
    proc = subprocess.run(
        ["bash", str(BED_SH), "up", prefix, str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        pytest.fail(
            f"bed.sh up {prefix} {n} failed: {lines[-1] if lines else proc.returncode}\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    return Bed.load(prefix, started)


def stop_bed(prefix: str) -> None:
    """`bed.sh down`, then fails loudly if anything of the bed is left."""
    bed_sh("down", prefix)
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"bed.sh down {prefix} left: {left}")


@pytest.fixture(scope="session")
def bed() -> Iterator[Bed]:
    """A bed of MUSTER_BED_HOSTS (default 3) hosts for the whole session; always removed."""
    check_prerequisites()
    reap_stale_beds()
    n = int(os.environ.get("MUSTER_BED_HOSTS", "3"))
    prefix = new_prefix()
    try:
        yield start_bed(prefix, n)
    finally:
        stop_bed(prefix)
