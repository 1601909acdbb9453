"""The repository's compose.ha.yaml, brought up for real with podman-compose:
PostgreSQL (localhost/muster-postgres, made by ``scripts/images.sh postgres``),
two control planes sharing it and one state directory, `join` and three agents.

One stack for the module, named for this session like the compose.yaml test's
(project ``muster-test-<tag>``, run network, node prefix, two free ports), torn
down even when a test fails, with nothing left. The tests run in file order:
one leader; a distributed run through the CLI on the compose network with
``--server controlplane-a:50051,controlplane-b:50051``; the leader's container
killed, the other control plane leading within the lease (printed), the agents
following it, a second run through the host's CLI with both published
addresses; the killed one started again as a follower, a third run through the
compose network's CLI (a refused call followed to the leader by its name);
``down -v`` leaving nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.compose.conftest import (
    AGENT_IMAGE,
    CP_IMAGE,
    SHORT_NODES,
    TEST_SETTINGS,
    Stack,
    _check_preconditions,
    podman,
)
from tests.conftest import BIN, REPO, free_port, run_cli, wait_for

COMPOSE_HA = REPO / "compose.ha.yaml"
POSTGRES_IMAGE = "localhost/muster-postgres:latest"
CONTROL_PLANES = ("controlplane-a", "controlplane-b")
HA_SERVICES = ("postgres", *CONTROL_PLANES, "join", *(f"agent-{n}" for n in SHORT_NODES))
HA_VOLUMES = (
    "postgres-data",
    "db-secret",
    "controlplane-data",
    "join-tokens",
    *(f"agent-{n}" for n in SHORT_NODES),
)
# The example codespecs and run (3 workers in pool gpu, the job in pool cpu), as the
# CLI containers see the repository (compose.ha.yaml mounts it at /work).
EXAMPLES = "examples/distributed"
LEASE_SECONDS = 5.0


class HaStack(Stack):
    """The stack, plus its two published API ports and the CLI on its network."""

    port_b: int = 0

    def published(self, service: str) -> str:
        return f"127.0.0.1:{self.port if service == 'controlplane-a' else self.port_b}"

    def both_published(self) -> str:
        return ",".join(self.published(s) for s in CONTROL_PLANES)

    def muster(self, *args: str, check: bool = True, timeout: float = 180):
        """The muster CLI in compose.ha.yaml's `muster` service: on the network `control`,
        --server controlplane-a:50051,controlplane-b:50051, as the administrator."""
        cmd = [
            str(BIN / "podman-compose"), "-f", str(self.compose_file), "-p", self.project,
            "--profile", "cli", "run", "--rm", "--no-deps", "-T", "muster", *args,
        ]  # fmt: skip
        result = subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        with self.log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
        if check:
            assert result.returncode == 0, f"muster {' '.join(args)}: {result.stderr[-2000:]}"
        return result

    def host_cli(self, *args: str, timeout: float = 120):
        """The host's muster CLI with both published addresses."""
        env = {**self.client_env(), "MUSTER_SERVER": self.both_published()}
        return run_cli(*args, check=True, timeout=timeout, env=env)

    def leader(self) -> str | None:
        """The control plane whose health service `muster-leader` is SERVING, if one."""
        ca = json.loads(self.config.read_text())["caCert"].encode()
        leaders = []
        for service in CONTROL_PLANES:
            creds = grpc.ssl_channel_credentials(ca)
            with grpc.secure_channel(self.published(service), creds) as channel:
                request = health_pb2.HealthCheckRequest(service="muster-leader")
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
                except grpc.RpcError:
                    continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                leaders.append(service)
        assert len(leaders) <= 1, f"two leaders: {leaders}"
        return leaders[0] if leaders else None

    def epochs(self, service: str) -> list[int]:
        """The epochs `service`'s control plane has printed `leading (epoch N)` for."""
        logs = podman("logs", self.container(service), check=False)
        return [int(e) for e in re.findall(r"^leading \(epoch (\d+)\)", logs.stdout, re.M)]

    def nodes_in_network(self) -> dict[str, dict]:
        result = self.muster("node", "list", "-o", "json", check=False, timeout=60)
        if result.returncode != 0:
            return {}
        return {n["name"]: n for n in json.loads(result.stdout) if n["name"].startswith(self.tag)}


def compose_cli_ok(result: subprocess.CompletedProcess) -> str:
    """stdout of a CLI call that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _build_images() -> None:
    """The muster images and localhost/muster-postgres, built (or found current)."""
    for build in (
        ["bash", str(REPO / "scripts" / "build-images.sh")],
        ["bash", str(REPO / "scripts" / "images.sh"), "postgres"],
    ):
        t0 = time.monotonic()
        done = subprocess.run(build, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(build)} failed: {done.stdout}{done.stderr}")
        print(f"{build[1].rsplit('/', 1)[-1]} {' '.join(build[2:])}: {time.monotonic() - t0:.1f} s")


def _stack_env(tag: str, project: str, port: int, port_b: int) -> dict[str, str]:
    """compose.ha.yaml's environment for this session's stack."""
    env = dict(os.environ)
    env.pop("COMPOSE_PROJECT_NAME", None)
    env.update(TEST_SETTINGS)
    env.update(
        MUSTER_PORT=str(port),
        MUSTER_PORT_B=str(port_b),
        MUSTER_RUN_NETWORK=f"{project}-runs",
        MUSTER_NODE_PREFIX=f"{tag}-",
        MUSTER_LEASE_SECONDS=str(LEASE_SECONDS),
        MUSTER_CONTROLPLANE_IMAGE=CP_IMAGE,
        MUSTER_AGENT_IMAGE=AGENT_IMAGE,
        MUSTER_POSTGRES_IMAGE=POSTGRES_IMAGE,
    )
    return env


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaStack]:
    """compose.ha.yaml up with one leader and three Ready nodes; torn down and checked."""
    _check_preconditions()
    _build_images()
    tag = f"h{secrets.token_hex(3)}"
    project = f"muster-test-{tag}"
    port, port_b = free_port(), free_port()
    while port_b == port:
        port_b = free_port()
    env = _stack_env(tag, project, port, port_b)
    tmp = tmp_path_factory.mktemp("compose-ha")
    s = HaStack(
        tag,
        project,
        f"{project}-runs",
        port,
        env,
        tmp / "compose.log",
        tmp / "admin.json",
        COMPOSE_HA,
        HA_SERVICES,
    )
    s.port_b = port_b
    try:
        t0 = time.monotonic()
        s.compose("up", "-d")
        s.fetch_credentials()
        wait_for(s.leader, 60, "a leader")
        wait_for(
            lambda: (
                {n["status"] for n in s.nodes_in_network().values()} == {"Ready"}
                and len(s.nodes_in_network()) == len(SHORT_NODES)
            ),
            90,
            "three Ready nodes",
            1,
        )
        print(
            f"compose.ha.yaml up, a leader and three Ready nodes in {time.monotonic() - t0:.1f} s"
        )
        yield s
    finally:
        left = s.leftovers()
        if any(left.values()):  # the tests did not get to (or through) their own `down -v`
            s.save_logs()
            try:
                s.compose("down", "-v", timeout=120)
            except (AssertionError, subprocess.TimeoutExpired):
                pass
            s.force_clean()
        remaining = s.leftovers()
        assert not any(remaining.values()), f"the compose HA test left behind: {remaining}"


def test_one_leader_both_names_in_the_certificate_and_the_database_unpublished(
    ha: HaStack,
) -> None:
    leader = ha.leader()
    assert leader in CONTROL_PLANES
    follower = next(s for s in CONTROL_PLANES if s != leader)
    assert ha.epochs(leader) and not ha.epochs(follower)
    # One state directory: one CA, and the server certificate names both control planes.
    pki = ha.volume_dir("controlplane-data") / "pki"
    cert = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(CONTROL_PLANES) <= set(san.get_values_for_type(x509.DNSName))
    admin = json.loads(ha.config.read_text())
    assert admin["caCert"] == (pki / "ca.crt").read_text()
    # PostgreSQL: not published; the password file is the control planes' (uid 10001), 0600.
    assert podman("port", ha.container("postgres")).stdout.strip() == ""
    pgpass = ha.volume_dir("db-secret") / "pgpass"
    info = pgpass.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (10001, 0o600)
    assert pgpass.read_text().startswith("*:*:*:muster:")


def test_distributed_run_through_both_control_planes(ha: HaStack) -> None:
    compose_cli_ok(ha.muster("codespec", "create", "hello-worker", "-f", f"{EXAMPLES}/worker.yaml"))
    compose_cli_ok(ha.muster("codespec", "create", "hello-job", "-f", f"{EXAMPLES}/job.yaml"))
    result = ha.muster("run", "exec", "-f", f"{EXAMPLES}/run.yaml")
    compose_cli_ok(result)
    assert "succeeded" in result.stderr, result.stderr
    runs = json.loads(compose_cli_ok(ha.muster("run", "list", "-o", "json")))
    assert [r["status"] for r in runs] == ["Succeeded"], runs


def test_the_other_control_plane_takes_over_when_the_leader_is_killed(ha: HaStack) -> None:
    old = ha.leader()
    assert old is not None
    survivor = next(s for s in CONTROL_PLANES if s != old)
    old_epoch = max(ha.epochs(old))
    t0 = time.monotonic()
    podman("kill", ha.container(old))  # SIGKILL; Podman's restart policy leaves it down
    wait_for(lambda: ha.leader() == survivor, 3 * LEASE_SECONDS, f"{survivor} to lead", 0.2)
    took = time.monotonic() - t0
    print(f"{survivor} leads {took:.1f} s after {old} was killed")
    assert took <= 2 * LEASE_SECONDS + 2
    assert max(ha.epochs(survivor)) > old_epoch
    # The agents follow it; a run through the host's CLI, given both published addresses
    # (the killed one refuses connections and is skipped), succeeds.
    nodes = [ha.node(n) for n in SHORT_NODES]

    def ready() -> bool:
        listed = json.loads(ha.host_cli("node", "list", "-o", "json").stdout)
        return all(
            any(n["name"] == name and n["status"] == "Ready" for n in listed) for name in nodes
        )

    wait_for(ready, 30, "the nodes to be Ready with the new leader", 0.5)
    result = ha.host_cli("run", "exec", "-f", str(REPO / EXAMPLES / "run.yaml"), timeout=180)
    assert "succeeded" in result.stderr, result.stdout + result.stderr
    # The killed control plane comes back as a follower of the new leader; the CLI on the
    # compose network (controlplane-a first) is sent on to the leader by name.
    ha.compose("start", old)

    def follows() -> bool:
        logs = podman("logs", ha.container(old), check=False).stdout
        return "following: " in logs.rsplit("muster control plane listening", 1)[-1]

    wait_for(follows, 60, f"{old} to start again as a follower")
    assert ha.leader() == survivor
    result = ha.muster("run", "exec", "-f", f"{EXAMPLES}/run.yaml")
    compose_cli_ok(result)
    assert "succeeded" in result.stderr, result.stderr
    runs = json.loads(compose_cli_ok(ha.muster("run", "list", "-o", "json")))
    assert [r["status"] for r in runs] == ["Succeeded"] * 3, runs
    wait_for(lambda: not ha.run_containers(), 30, "every run container to be removed")


def test_down_with_volumes_leaves_nothing(ha: HaStack) -> None:
    ha.save_logs()
    volumes = {v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.split()}
    assert {ha.volume(v) for v in HA_VOLUMES} <= volumes
    ha.compose("down", "-v")
    assert ha.leftovers() == {"containers": [], "networks": [], "volumes": [], "pods": []}
