"""The multi-host test bed itself: hosts, their Podman, ports, partitions, reboots, cleanup."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.multihost.conftest import (
    Bed,
    Host,
    bed_sh,
    leftovers,
    new_prefix,
    start_bed,
    stop_bed,
)

BUSYBOX = "localhost/muster-busybox:latest"
PYTHON = "localhost/muster-python:latest"
WEB_PORT = 18080

# Run inside a host: connect to ADDR PORT within TIMEOUT s; prints "ok" or the error.
PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except OSError as e:
    print(type(e).__name__, e)
"""
# Run inside a host: listen on ADDR PORT, say "ready", accept and close until killed.
LISTENER = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


def alive(pid: int) -> bool:
    """Is PID a live process (not gone, not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reach(host: Host, addr: str, port: int, timeout: float = 3.0) -> str:
    """From inside HOST: "ok" if a TCP connection to ADDR:PORT opens, else the error."""
    return host.exec("python3", "-c", PROBE, addr, str(port), str(timeout)).stdout.strip()


def reach_from_container(host: Host, addr: str, port: int, timeout: float = 3.0) -> str:
    """The same from a container on HOST (its traffic is forwarded, not sent, by the host)."""
    out = host.podman("run", "--rm", PYTHON, "python3", "-c", PROBE, addr, str(port), str(timeout))
    return out.stdout.strip()


def http_get(url: str, timeout: float = 2.0) -> int | str:
    """From the root namespace: the HTTP status, or the error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, OSError) as e:
        return f"{type(e).__name__}: {e}"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("d", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def api_get(host: Host, path: str) -> object:
    """GET PATH from the host's Podman API, on its own socket."""
    conn = UnixHTTPConnection(host.socket)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, f"{host.name} {path}: HTTP {resp.status} {body[:200]!r}"
        return json.loads(body)
    finally:
        conn.close()


@pytest.fixture
def cp_listener(bed: Bed) -> Iterator[int]:
    """A TCP listener on the control plane address (root namespace); yields its port."""
    srv = socket.create_server((bed.cp_address, 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()


@pytest.fixture(scope="module")
def web(bed: Bed) -> Iterator[str]:
    """`python3 -m http.server` in a container on h1, published on h1's address."""
    h1 = bed.hosts[0]
    name = f"{bed.prefix}-web"
    h1.podman(
        "run", "-d", "--name", name, "-p", f"{h1.address}:{WEB_PORT}:8080",
        PYTHON, "python3", "-m", "http.server", "8080",
    )  # fmt: skip
    url = f"http://{h1.address}:{WEB_PORT}/"
    try:
        wait_for(lambda: http_get(url) == 200, 30, f"{url} to answer from the root namespace")
        yield url
    finally:
        h1.podman("rm", "-f", "-t", "0", name, check=False)


def test_hosts_come_up_each_with_its_own_podman(bed: Bed) -> None:
    assert len(bed.hosts) >= 3
    addresses = [h.address for h in bed.hosts]
    assert len(set(addresses)) == len(addresses)
    assert bed.cp_address.endswith(".1") and bed.cp_address.rsplit(".", 1)[0] == bed.net[:-5]
    roots = set()
    for h in bed.hosts:
        assert h.url == f"unix://{h.socket}" and h.socket.endswith("/podman.sock")
        ip = h.exec("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f"inet {h.address}/24" in ip
        info = api_get(h, "/v4.0.0/libpod/info")
        assert isinstance(info, dict)
        assert info["store"]["graphRoot"] == h.root
        assert info["store"]["runRoot"] == h.runroot
        assert info["host"]["networkBackend"] == "netavark"
        roots.add(info["store"]["graphRoot"])
        images = api_get(h, "/v4.0.0/libpod/images/json")
        assert isinstance(images, list)
        tags = {t for img in images for t in img.get("RepoTags") or []}
        assert {BUSYBOX, PYTHON} <= tags, f"{h.name} has {tags}"
    assert len(roots) == len(bed.hosts)
    assert "/var/lib/containers/storage" not in roots


def test_published_port_answers_root_namespace_and_other_hosts(bed: Bed, web: str) -> None:
    h1, h2, h3 = bed.hosts[:3]
    assert http_get(web) == 200
    for other in (h2, h3):
        assert reach(other, h1.address, WEB_PORT) == "ok"
        out = other.exec(
            "python3", "-c", f"import urllib.request; print(urllib.request.urlopen({web!r}).status)"
        )
        assert out.stdout.strip() == "200", f"from {other.name}: {out.stdout}{out.stderr}"


def test_cut_drops_control_plane_only_and_heal_restores(
    bed: Bed, web: str, cp_listener: int
) -> None:
    h1, h2 = bed.hosts[:2]
    assert reach(h1, bed.cp_address, cp_listener) == "ok"
    assert reach_from_container(h1, bed.cp_address, cp_listener) == "ok"
    listener = h2.popen("python3", "-c", LISTENER, h2.address, "18181", stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        bed.cut(h1)
        try:
            # h1 <-> control plane: dropped both ways, for the host and for its containers.
            assert "timed out" in reach(h1, bed.cp_address, cp_listener, timeout=1)
            assert "timed out" in reach_from_container(h1, bed.cp_address, cp_listener, timeout=1)
            assert "timed out" in str(http_get(web, timeout=1))
            assert "CUT" in bed.status()
            # h1 <-> other hosts: still there.
            assert reach(h1, h2.address, 18181) == "ok"
            assert reach(h2, h1.address, WEB_PORT) == "ok"
            # Other hosts <-> control plane: untouched.
            assert reach(h2, bed.cp_address, cp_listener) == "ok"
        finally:
            bed.heal(h1)
        wait_for(lambda: reach(h1, bed.cp_address, cp_listener) == "ok", 10, "h1 -> cp after heal")
        wait_for(lambda: http_get(web) == 200, 10, "cp -> h1 after heal")
    finally:
        listener.kill()
        listener.wait(5)


def test_hosts_reach_nothing_outside_the_bed(bed: Bed) -> None:
    h1 = bed.hosts[0]
    # This machine's own addresses outside the bed (never anything off the machine).
    addrs = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout.split("\n")
    # Not those h1 holds itself: its own Podman's default network has the machine's
    # 10.88.0.1 too, once a container ran there (that one answers, from inside h1).
    own = h1.exec("ip", "-4", "-o", "addr", "show").stdout.split("\n")
    local = {line.split()[3].split("/")[0] for line in own if line.strip()}
    outside = [
        line.split()[3].split("/")[0]
        for line in addrs
        if line.strip() and line.split()[1] != bed.bridge
    ]
    outside = [a for a in outside if a not in local]
    assert outside, addrs
    for addr in outside[:3]:
        # Rejected at once (EHOSTUNREACH), not dropped (a timeout).
        got = reach(h1, addr, 9, timeout=5)
        assert "No route to host" in got, f"{addr}: {got}"
    # No name resolves (not on the host, not in its containers), and fast.
    code = (
        "import socket, time\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('resolved')\n"
        "except OSError:\n"
        "    print('failed', round(time.monotonic() - t, 2))\n"
    )
    for out in (
        h1.exec("python3", "-c", code),
        h1.podman("run", "--rm", PYTHON, "python3", "-c", code),
    ):
        verdict, took = out.stdout.split()
        assert verdict == "failed" and float(took) < 1, out.stdout


def test_same_network_name_on_two_hosts_does_not_collide(bed: Bed) -> None:
    """What the agent does on every host: a bridge network `muster` with DNS, containers on it
    found by name. Rootful Podman keeps netavark/aardvark state at one fixed path, so this
    only works because each host has its own /run."""
    h2, h3 = bed.hosts[1:3]
    net = f"{bed.prefix}-net"
    try:
        for h in (h2, h3):
            h.podman("network", "create", net)
            h.podman(
                "run", "-d", "--name", f"{bed.prefix}-named", "--network", net,
                PYTHON, "python3", "-m", "http.server", "8080",
            )  # fmt: skip
        for h in (h2, h3):
            own_ip = h.podman(
                "inspect", "--format",
                f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}",
                f"{bed.prefix}-named",
            ).stdout.strip()  # fmt: skip
            code = (
                "import socket, time, urllib.request\n"
                f"ip = socket.gethostbyname('{bed.prefix}-named')\n"
                "for _ in range(50):\n"
                "    try:\n"
                f"        print(ip, urllib.request.urlopen('http://{bed.prefix}-named:8080/').status)\n"
                "        break\n"
                "    except OSError:\n"
                "        time.sleep(0.1)\n"
            )
            out = h.podman("run", "--rm", "--network", net, PYTHON, "python3", "-c", code)
            assert out.stdout.split() == [own_ip, "200"], f"{h.name}: {out.stdout}{out.stderr}"
    finally:
        for h in (h2, h3):
            h.podman("rm", "-f", "-t", "0", f"{bed.prefix}-named", check=False)
            h.podman("network", "rm", "-f", net, check=False)
    machine_nets = subprocess.run(
        ["podman", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True
    ).stdout.split()
    assert net not in machine_nets
    # Nothing in the machine's own (fixed-path) netavark/aardvark state either.
    assert not list(Path("/run/containers/networks").glob(f"**/*{bed.prefix}*"))


def test_reboot_is_a_power_loss(bed: Bed) -> None:
    h3 = bed.hosts[2]
    since = time.time()
    running, exited = f"{bed.prefix}-running", f"{bed.prefix}-exited"
    h3.podman("run", "-d", "--name", running, BUSYBOX, "sleep", "600")
    h3.podman("run", "--name", exited, BUSYBOX, "true")
    pid = int(h3.podman("inspect", "--format", "{{.State.Pid}}", running).stdout)
    assert bed.events(h3, since=since) == 2
    bed.cut(h3)
    try:
        bed.reboot(h3)
        # Everything of the host died without cleanup; its Podman answers again.
        assert not alive(pid)
        api_get(h3, "/v4.0.0/libpod/info")
        state = json.loads(h3.podman("inspect", running, exited).stdout)
        by_name = {c["Name"]: c["State"] for c in state}
        # Podman 4.3 after a reboot: running -> "created" (configured), StartedAt kept.
        assert by_name[running]["Status"] == "created"
        assert not by_name[running]["StartedAt"].startswith("0001-")
        assert by_name[exited]["Status"] == "exited"
        # The events log survives the reboot, and a reboot creates nothing.
        assert bed.events(h3, since=since) == 2
        assert bed.events(h3, event="start", since=since) == 2
        # A partition is the network's, not the host's: it survives the reboot.
        assert "CUT" in bed.status()
    finally:
        bed.heal(h3)
        h3.podman("rm", "-f", "-t", "0", running, exited, check=False)


def _machine_podman(*args: str) -> set[str]:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_down_leaves_nothing_behind(bed: Bed) -> None:
    """A bed of its own (one host, a container and a network on it): down twice, nothing left,
    the machine's own Podman untouched. Uses `bed` only to run after the others.

    Other tests may change the machine's Podman meanwhile, so "untouched" is proven with a
    canary network and container of this test's own on the machine's Podman: a host's
    `system reset` reaching the machine's storage would remove both."""
    prefix = new_prefix()
    canary = f"{prefix}-canary"
    subprocess.run(["podman", "network", "create", canary], capture_output=True, check=True)
    subprocess.run(
        ["podman", "create", "--name", canary, "--network", canary, BUSYBOX, "true"],
        capture_output=True,
        check=True,
    )
    try:
        try:
            small = start_bed(prefix, 1)
            h1 = small.hosts[0]
            h1.podman("network", "create", "muster")
            h1.podman(
                "run", "-d", "--name", f"{prefix}-c", "--network", "muster", BUSYBOX, "sleep", "60"
            )
            assert leftovers(prefix)
        finally:
            stop_bed(prefix)
        assert leftovers(prefix) == []
        bed_sh("down", prefix)  # twice: harmless
        assert leftovers(prefix) == []
        # The machine's Podman: the canaries are still there, nothing else of ours is.
        names = _machine_podman("ps", "-a", "--format", "{{.Names}}")
        nets = _machine_podman("network", "ls", "--format", "{{.Name}}")
        assert canary in names and canary in nets
        assert [n for n in names | nets if prefix in n] == [canary]
        assert "podman" in nets
        images = _machine_podman("images", "--format", "{{.Repository}}:{{.Tag}}")
        assert images >= {BUSYBOX, PYTHON}
    finally:
        subprocess.run(["podman", "rm", "-f", canary], capture_output=True, check=False)
        subprocess.run(["podman", "network", "rm", "-f", canary], capture_output=True, check=False)
