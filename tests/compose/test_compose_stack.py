"""compose.yaml for real: a control plane and three agents (two in pool cpu, one in
pool gpu) in containers, driving the host's Podman through its socket; checked
from the host with the `muster` CLI and the Node.js client, as the administrator.
The API takes TLS and tokens only; the agents joined with the join tokens that the
one-shot `join` service made, and keep their certificates across restarts.

The tests share one stack and run in file order; the last ones bring it down and
check that nothing of it is left.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import grpc
import pytest
from cryptography import x509

from muster.common.pki import new_key, node_csr, parse_node_cert
from muster.v1 import agent_pb2, agent_pb2_grpc, node_pb2, node_pb2_grpc
from tests.compose.conftest import SHORT_NODES, VOLUMES, Stack, podman, wait_for
from tests.conftest import REPO, isolated_env, run_cli

pytestmark = [pytest.mark.podman, pytest.mark.timeout(600)]

EXAMPLES = REPO / "examples" / "distributed"
NODE_EXAMPLE = REPO / "examples" / "node"

# A job that keeps talking to every worker until told to stop (a file in its
# container), then exits 0: it fails if a worker stops answering meanwhile. Worker
# names are resolved once, at release: with Debian 12's aardvark-dns 1.4, lookups on
# a run network can stall for ~25 s just after another container leaves it (seen
# about once in ten agent stops), and this job is about connectivity, not DNS.
HOLD_JOB = """
import json, os, socket, time
targets = []
for address in json.loads(os.environ["TYGER_ECHO_WORKER_ENDPOINT_ADDRESSES"]):
    host, port = address.rsplit(":", 1)
    targets.append((socket.gethostbyname(host), int(port)))
print("workers at", targets, flush=True)
while not os.path.exists("/tmp/done"):
    for target in targets:
        with socket.create_connection(target, timeout=5) as conn:
            assert conn.makefile().readline().startswith("run-")
    time.sleep(0.3)
print("done")
"""


POOLS = {"cpu-1": ("cpu",), "cpu-2": ("cpu",), "gpu-1": ("gpu",)}


def replicas(run: dict, role: str) -> list[dict]:
    return [r for r in run.get("replicas", []) if r["role"] == role]


def node_cert(stack: Stack, short: str) -> bytes:
    """The certificate in the agent's own state volume."""
    return (stack.volume_dir(f"agent-{short}") / "node.crt").read_bytes()


def rpc_error(call, *args) -> grpc.RpcError:
    """The error that `call(*args)`, which must fail, raises."""
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    return err.value


def join_as(stack: Stack, token: str, node: str) -> None:
    """What an agent does on its first start: spend `token` on a certificate for `node`."""
    ca = json.loads(stack.config.read_text())["caCert"].encode()
    request = agent_pb2.JoinRequest(
        join_token=token, node_name=node, csr_pem=node_csr(new_key(), node).decode()
    )
    with grpc.secure_channel(stack.server, grpc.ssl_channel_credentials(ca)) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Join(request, timeout=10)


def big_request(stack: Stack) -> str:
    """A CPU request that fits once, not twice, on a cpu node: two replicas must spread."""
    cpu = int(stack.nodes()[stack.node("cpu-1")]["allocatable"]["cpuMillis"])
    return f"{cpu * 6 // 10}m"


@pytest.fixture(scope="module")
def codespecs(stack: Stack) -> Stack:
    """The example codespecs, a 'big' worker (two never fit on one node) and helper jobs."""
    stack.cli("codespec", "create", "hello-worker", "-f", str(EXAMPLES / "worker.yaml"))
    stack.cli("codespec", "create", "hello-job", "-f", str(EXAMPLES / "job.yaml"))
    stack.cli(
        "codespec",
        "create",
        "big-worker",
        "-f",
        str(EXAMPLES / "worker.yaml"),
        "--cpu-request",
        big_request(stack),
    )
    stack.cli(
        "codespec",
        "create",
        "hold-job",
        "--image",
        "localhost/muster-python:latest",
        "--command",
        "--",
        "python3",
        "-u",
        "-c",
        HOLD_JOB,
    )
    stack.cli(
        "codespec",
        "create",
        "sleep-job",
        "--image",
        "localhost/muster-busybox:latest",
        "--command",
        "--",
        "sleep",
        "3600",
    )
    return stack


def test_three_ready_nodes_in_two_pools(stack: Stack) -> None:
    nodes = stack.nodes()
    assert sorted(nodes) == sorted(stack.node(n) for n in SHORT_NODES)
    assert {n["status"] for n in nodes.values()} == {"Ready"}
    pools = {name: n["pools"] for name, n in nodes.items()}
    assert pools == {
        stack.node("cpu-1"): ["cpu"],
        stack.node("cpu-2"): ["cpu"],
        stack.node("gpu-1"): ["gpu"],
    }
    assert {n["networkMode"] for n in nodes.values()} == {"bridge"}
    table = stack.cli("node", "list").stdout
    for name in nodes:
        assert name in table
    # The API is published on the loopback address only; the agents' port is not at all.
    ports = podman("port", stack.container("controlplane")).stdout.split()
    assert ports == ["50051/tcp", "->", stack.server], ports


def test_api_takes_only_tls_with_a_token(stack: Stack) -> None:
    ca = json.loads(stack.config.read_text())["caCert"].encode()
    request = node_pb2.ListNodesRequest()

    def list_nodes(channel: grpc.Channel, metadata: tuple = ()) -> None:
        with channel:
            node_pb2_grpc.NodeServiceStub(channel).ListNodes(request, timeout=10, metadata=metadata)

    # A plaintext client does not even get a connection.
    err = rpc_error(list_nodes, grpc.insecure_channel(stack.server))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    # TLS, the server verified by the cluster CA (as 127.0.0.1), but no token or a wrong one.
    tls = grpc.ssl_channel_credentials(ca)
    err = rpc_error(list_nodes, grpc.secure_channel(stack.server, tls))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    bogus = (("authorization", "Bearer mst_not-a-token"),)
    err = rpc_error(list_nodes, grpc.secure_channel(stack.server, tls), bogus)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    # The CLI without credentials says what is missing.
    bare = run_cli("node", "list", server=stack.server, timeout=30)
    assert bare.returncode == 1 and "MUSTER_CONFIG" in bare.stderr, bare.stderr


def test_every_agent_joined_with_a_join_token(stack: Stack) -> None:
    admin = json.loads(stack.config.read_text())
    ca = x509.load_pem_x509_certificate(admin["caCert"].encode())
    tokens = stack.volume_dir("join-tokens")
    assert (tokens / "ca.crt").read_text() == admin["caCert"]
    # The server certificate names `controlplane`, as the agents reach it.
    server_cert = x509.load_pem_x509_certificate(
        (stack.volume_dir("controlplane-data") / "pki" / "server.crt").read_bytes()
    )
    san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "controlplane" in san.get_values_for_type(x509.DNSName)

    nodes = stack.nodes()
    for short in SHORT_NODES:
        name = stack.node(short)
        assert nodes[name]["status"] == "Ready", nodes[name]
        # Its identity is in its own volume: a certificate from the cluster CA for
        # this node and the pools of its join token; it connects to the mTLS port.
        state = stack.volume_dir(f"agent-{short}")
        pem = node_cert(stack, short)
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(ca)
        cert = parse_node_cert(pem)
        assert (cert.node, cert.pools) == (name, POOLS[short])
        assert json.loads((state / "agent.json").read_text()) == {
            "agentServer": "controlplane:50052"
        }
        token_file = tokens / f"{name}.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # Whatever token is left in the shared volume was spent: it joins nobody.
        token = token_file.read_text().strip()
        if token:
            err = rpc_error(join_as, stack, token, f"{stack.tag}-intruder")
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert f"{stack.tag}-intruder" not in stack.nodes()


def test_job_in_pool_cpu_reaches_workers_in_pool_gpu(codespecs: Stack) -> None:
    stack = codespecs
    result = stack.cli("run", "exec", "-f", str(EXAMPLES / "run.yaml"), check=False, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = int(json.loads(stack.cli("run", "list", "--limit", "1", "-o", "json").stdout)[0]["id"])
    run = stack.run_json(run_id)
    assert run["status"] == "Succeeded", run
    workers, jobs = replicas(run, "worker"), replicas(run, "job")
    # The job (which asks every worker its name and fails on a wrong answer) ran on
    # one agent, the three workers on another: the shared run network carried it.
    assert {w["nodeName"] for w in workers} == {stack.node("gpu-1")}
    assert len(workers) == 3
    assert jobs[0]["nodeName"] in {stack.node("cpu-1"), stack.node("cpu-2")}
    assert sorted(w["endpointAddresses"]["echo"] for w in workers) == [
        f"run-{run_id}-worker-{i}:7000" for i in range(3)
    ]
    stack.wait_run(run_id)
    wait_for(lambda: not stack.run_containers(run_id), 30, f"run {run_id}'s containers removed")


def test_workers_spread_over_both_cpu_agents(codespecs: Stack) -> None:
    stack = codespecs
    run_id = stack.create_run(
        "-c",
        "hello-job",
        "--node-pool",
        "cpu",
        "--worker-codespec",
        "big-worker",
        "--worker-replicas",
        "2",
        "--worker-node-pool",
        "cpu",
    )
    run = stack.wait_run(run_id)
    assert run["status"] == "Succeeded", run
    assert sorted(w["nodeName"] for w in replicas(run, "worker")) == [
        stack.node("cpu-1"),
        stack.node("cpu-2"),
    ]
    wait_for(lambda: not stack.run_containers(run_id), 30, f"run {run_id}'s containers removed")


def test_node_client_runs_a_distributed_run(stack: Stack) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.fail("Node.js and examples/node/node_modules are needed: run scripts/setup.sh")
    script = [node, str(NODE_EXAMPLE / "distributed-run.js")]
    # Credentials like the CLI's: the admin credential file, the published address.
    env = {**isolated_env(), **stack.client_env()}

    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script, *args], capture_output=True, text=True, timeout=180, env=env
        )

    result = client(
        "--workers", "2", "--worker-pool", "gpu", "--job-pool", "cpu", "--timeout", "120"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    run_id = int(next(ln for ln in lines if " created: " in ln).split()[1])
    assert lines[-1] == f"run {run_id} succeeded", result.stdout
    run = stack.run_json(run_id)
    assert run["status"] == "Succeeded" and run["tags"] == {"client": "node"}
    assert {w["nodeName"] for w in replicas(run, "worker")} == {stack.node("gpu-1")}
    # An invalid request is a clean error and a non-zero exit.
    bad = client("--worker-pool", "no-such-pool")
    assert bad.returncode == 1 and "FAILED_PRECONDITION" in bad.stderr, bad.stderr


def assert_goes_not_ready_then_lost(stack: Stack, lost_node: str) -> None:
    """The node of a stopped agent turns NotReady, then Lost, in that order."""
    seen = []

    def status_is(wanted: str) -> bool:
        status = stack.node_status(lost_node)
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == wanted

    wait_for(lambda: status_is("NotReady"), 20, f"{lost_node} to be NotReady", 0.2)
    wait_for(lambda: status_is("Lost"), 30, f"{lost_node} to be Lost", 0.2)
    assert seen[-2:] == ["NotReady", "Lost"], seen


def test_lost_agent_fails_only_its_runs_and_comes_back(codespecs: Stack) -> None:
    stack = codespecs
    worker_run = ["--worker-codespec", "big-worker", "--worker-node-pool", "cpu"]
    # A run that must stay untouched: its job (in pool gpu) keeps talking to its worker.
    kept = stack.create_run("-c", "hold-job", "--node-pool", "gpu", *worker_run)
    kept_run = stack.wait_run(kept, {"Running"}, timeout=60)
    wait_for(
        lambda: replicas(stack.run_json(kept), "job")[0]["state"] == "running",
        30,
        f"run {kept}'s job to run",
    )
    # A run whose worker can only go to the other cpu node (the big worker fits once per node).
    doomed = stack.create_run("-c", "sleep-job", "--node-pool", "gpu", *worker_run)
    doomed_run = stack.wait_run(doomed, {"Running"}, timeout=60)
    lost_node = replicas(doomed_run, "worker")[0]["nodeName"]
    kept_node = replicas(kept_run, "worker")[0]["nodeName"]
    assert lost_node != kept_node

    agent = f"agent-{stack.short(lost_node)}"
    identity = node_cert(stack, stack.short(lost_node))
    stack.compose("stop", agent)
    assert_goes_not_ready_then_lost(stack, lost_node)

    failed = stack.wait_run(doomed, timeout=30)
    assert failed["status"] == "Failed", failed
    assert "lost" in failed["statusReason"] and lost_node in failed["statusReason"], failed
    # The job of the failed run lived on a healthy node: it is removed at once. Its
    # worker stays until its agent is back (nobody can reach that node meanwhile).
    doomed_worker = next(r for r in failed["replicas"] if r["role"] == "worker")
    wait_for(
        lambda: stack.run_containers(doomed) == [doomed_worker["containerName"]],
        30,
        f"the job container of run {doomed} to be removed",
    )

    # The other run was untouched: still running, and its job still reaches its worker.
    untouched = stack.run_json(kept)
    assert untouched["status"] == "Running", untouched
    assert [r["state"] for r in untouched["replicas"]] == ["running", "running"]
    kept_job = next(r for r in untouched["replicas"] if r["role"] == "job")
    podman("exec", kept_job["containerName"], "touch", "/tmp/done")
    finished = stack.wait_run(kept, timeout=30)
    assert finished["status"] == "Succeeded", finished

    # The agent comes back with the certificate in its volume (its join token is spent):
    # the node is Ready, and leftovers of the failed run go.
    stack.compose("start", agent)
    stack.wait_ready([lost_node], timeout=30)
    assert node_cert(stack, stack.short(lost_node)) == identity
    wait_for(lambda: not stack.run_containers(doomed), 30, f"run {doomed}'s leftovers removed")

    # New runs use the node again: two big workers need both cpu nodes.
    again = stack.create_run(
        "-c", "hello-job", "--node-pool", "cpu", *worker_run, "--worker-replicas", "2"
    )
    run = stack.wait_run(again)
    assert run["status"] == "Succeeded", run
    assert lost_node in {w["nodeName"] for w in replicas(run, "worker")}


def test_down_keeps_the_state_volumes_and_up_reuses_them(stack: Stack) -> None:
    runs_before = json.loads(stack.cli("run", "list", "-o", "json").stdout)
    certs = {short: node_cert(stack, short) for short in SHORT_NODES}
    wait_for(lambda: not stack.run_containers(), 30, "every run container to be removed")
    stack.save_logs()
    stack.compose("down")
    left = stack.leftovers()
    volumes = sorted(stack.volume(v) for v in VOLUMES)
    assert left == {"containers": [], "networks": [], "volumes": volumes, "pods": []}
    # Up again on the same volumes: `join` runs again and succeeds (the nodes are
    # known: no new tokens), the agents reuse their certificates, the runs are there.
    stack.compose("up", "-d")
    admin = stack.fetch_credentials()
    assert admin["server"] == "127.0.0.1:50051"  # inside its container; MUSTER_SERVER wins
    stack.wait_ready([stack.node(n) for n in SHORT_NODES])
    join = stack.container("join")

    def join_exit() -> str | None:
        status = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", join)
        state, code = status.stdout.split()
        return code if state == "exited" else None

    assert wait_for(join_exit, 60, "the join service to finish") == "0"
    join_log = podman("logs", join).stdout + podman("logs", join).stderr
    for short in SHORT_NODES:
        assert f"node {stack.node(short)} has joined already" in join_log, join_log
        assert node_cert(stack, short) == certs[short]
        token = stack.volume_dir("join-tokens") / f"{stack.node(short)}.token"
        assert token.read_text() == ""
    runs_after = json.loads(stack.cli("run", "list", "-o", "json").stdout)
    assert [(r["id"], r["status"]) for r in runs_after] == [
        (r["id"], r["status"]) for r in runs_before
    ]


def test_down_with_volumes_leaves_nothing(stack: Stack) -> None:
    stack.save_logs()
    stack.compose("down", "-v")
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": [], "pods": []}
