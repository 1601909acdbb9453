"""`muster registry ...`, `muster image ...` and `--pull`, against a real
secure control plane process. Where a node is needed, the test speaks the
agent's Connect protocol itself over mTLS (a node joined with a join token),
so it sees exactly what the control plane sends each node."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from muster.common.pki import key_pem, new_key, node_csr
from muster.v1 import agent_pb2 as apb
from muster.v1 import agent_pb2_grpc as agrpc
from muster.v1 import run_pb2 as rpb
from muster_cli.run_text import describe, progress_line
from tests.conftest import BIN, Process, isolated_env, run_cli, start_process, until
from tests.security.conftest import FakeAgent, connect

PASSWORD = "Pa55-word-that-must-never-be-logged-91c2"
REGISTRY = "registry.example:5000"
PRIVATE = f"{REGISTRY}/team/app:1"
DIGEST = "sha256:" + "e" * 64


def cli_stdin(cp: Process, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`muster ARGS` as the admin of `cp`, with `stdin` as its standard input."""
    env = {**isolated_env(), **cp.env()}
    return subprocess.run(
        [str(BIN / "muster"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def debug_cp(tmp_path: Path) -> Iterator[Process]:
    """A secure control plane process logging everything it logs (DEBUG)."""
    process = start_process(tmp_path / "cp.db", extra=["--log-level", "DEBUG"])
    try:
        yield process
    finally:
        process.stop()


class Node:
    """A node joined to a control plane process, driven by the test."""

    def __init__(self, channel: grpc.aio.Channel, agent: FakeAgent) -> None:
        self.channel, self.agent = channel, agent

    def heartbeat(self) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        self.agent.send(heartbeat=apb.Heartbeat(time=now))

    async def close(self) -> None:
        self.agent.outbox.put_nowait(None)
        await self.channel.close()


async def join(cp: Process, name: str, pool: str) -> Node:
    token = await asyncio.to_thread(
        run_cli, "node", "join-token", "create", "--pool", pool, server=cp, check=True
    )
    ca = cp.ca_cert.read_bytes()
    key = new_key()
    async with grpc.aio.secure_channel(cp.address, grpc.ssl_channel_credentials(ca)) as ch:
        joined = await agrpc.AgentServiceStub(ch).Join(
            apb.JoinRequest(
                join_token=token.stdout.strip(),
                node_name=name,
                csr_pem=node_csr(key, name).decode(),
            )
        )
    channel = grpc.aio.secure_channel(
        cp.agent_address,
        grpc.ssl_channel_credentials(ca, key_pem(key), joined.certificate_pem.encode()),
    )
    agent = await connect(channel, name, [pool])
    await agent.next("registered")
    return Node(channel, agent)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    joined: list[Node] = []
    try:
        yield joined
    finally:
        for node in joined:
            await node.close()


def status(start: apb.StartContainer, state: int, **fields: object) -> apb.ContainerStatus:
    return apb.ContainerStatus(
        run_id=start.run_id,
        role=start.role,
        replica=start.replica,
        container_name=start.container_name,
        state=state,  # type: ignore[arg-type]
        generation=start.generation,
        **fields,  # type: ignore[arg-type]
    )


async def cli(cp: Process, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, off the event loop (the nodes' streams keep flowing)."""
    return await asyncio.to_thread(run_cli, *args, server=cp)


async def until_cli(cp: Process, args: tuple[str, ...], check, what: str, within: float = 15):
    seen: list = []

    async def passing() -> object:
        seen.append(await cli(cp, *args))
        return seen[-1] if check(seen[-1]) else None

    last = lambda: f"{what}: {seen[-1].stdout if seen else ''}"  # noqa: E731
    return await until(passing, within, last, 0.1)


# -- registry credentials ------------------------------------------------------------


def test_registry_login_list_logout(cp_process: Process) -> None:
    cp = cp_process
    login = cli_stdin(
        cp, PASSWORD + "\n", "registry", "login", REGISTRY, "-u", "bob", "--password-stdin"
    )
    assert login.returncode == 0, login.stderr
    assert login.stdout == f"credentials for {REGISTRY} stored (user bob)\n"
    assert PASSWORD not in login.stdout + login.stderr
    again = cli_stdin(
        cp,
        "other\r\n",
        "registry",
        "login",
        "https://Quay.io/",
        "--username",
        "amy",
        "--password-stdin",
    )
    assert again.returncode == 0 and "credentials for quay.io stored" in again.stdout

    table = run_cli("registry", "list", server=cp, check=True).stdout
    assert table.split() == ["REGISTRY", "USERNAME", "quay.io", "amy", REGISTRY, "bob"]
    listed = json.loads(run_cli("registry", "list", "-o", "json", server=cp, check=True).stdout)
    assert listed == [
        {"registry": "quay.io", "username": "amy"},
        {"registry": REGISTRY, "username": "bob"},
    ]
    out = run_cli("registry", "logout", "quay.io", server=cp, check=True)
    assert out.stdout == "credentials for quay.io removed\n"
    gone = run_cli("registry", "logout", "quay.io", server=cp)
    assert gone.returncode == 1
    assert one_line(gone) == (
        "error: no login is stored for registry 'quay.io'; `muster registry list` shows them"
    )
    assert "quay.io" not in run_cli("registry", "list", server=cp, check=True).stdout

    # The key that seals the passwords was made in the state directory, 0600.
    key = cp.state_dir / "registry.key"
    assert key.stat().st_mode & 0o777 == 0o600
    raw = b"".join(p.read_bytes() for p in cp.db.parent.glob("cp.db*"))
    assert PASSWORD.encode() not in raw


def test_registry_bad_input_is_one_line_with_the_right_code(cp_process: Process) -> None:
    cp = cp_process
    cases = [
        # (stdin, args, exit code, fragment)
        (PASSWORD, ("registry", "login", REGISTRY, "-u", "bob"), 2, "--password-stdin"),
        ("", ("registry", "login", REGISTRY, "-u", "bob", "--password-stdin"), 2, "empty"),
        ("\n", ("registry", "login", REGISTRY, "-u", "bob", "--password-stdin"), 2, "empty"),
        (PASSWORD, ("registry", "login", REGISTRY, "--password-stdin"), 2, "--username"),
        (
            PASSWORD,
            ("registry", "login", "quay.io/team", "-u", "bob", "--password-stdin"),
            1,
            "without a repository path",
        ),
        (
            "two\nlines\n",
            ("registry", "login", REGISTRY, "-u", "bob", "--password-stdin"),
            1,
            "one line",
        ),
    ]
    for stdin, args, code, fragment in cases:
        result = cli_stdin(cp, stdin, *args)
        assert result.returncode == code, (args, result.stderr)
        assert fragment in one_line(result), (args, result.stderr)
        assert PASSWORD not in result.stdout + result.stderr
    assert run_cli("registry", "list", server=cp, check=True).stdout.strip() == "REGISTRY  USERNAME"

    secret = run_cli("token", "create", "dev", "--role", "user", server=cp, check=True).stdout
    as_user = {"MUSTER_TOKEN": secret.strip()}
    refused = run_cli("registry", "list", server=cp, env=as_user)
    assert refused.returncode == 1 and "PERMISSION_DENIED" not in refused.stderr
    assert "admin" in one_line(refused)
    denied = subprocess.run(
        [str(BIN / "muster"), "registry", "login", REGISTRY, "-u", "x", "--password-stdin"],
        input=PASSWORD,
        capture_output=True,
        text=True,
        env={**isolated_env(), **cp.env(), **as_user},
        timeout=60,
    )
    assert denied.returncode == 1 and "admin" in one_line(denied)


# -- pull policies ---------------------------------------------------------------------


def pull_policy_of(cp: Process, run_id: str) -> str:
    shown = json.loads(run_cli("run", "show", run_id, "-o", "json", server=cp, check=True).stdout)
    return shown.get("pullPolicy", "")


def test_pull_flag_run_file_field_and_their_errors(cp_process: Process, tmp_path: Path) -> None:
    cp = cp_process
    run_cli("codespec", "create", "j", "--image", PRIVATE, server=cp, check=True)
    flagged = run_cli("run", "create", "-c", "j", "--pull", "never", server=cp, check=True)
    assert pull_policy_of(cp, flagged.stdout.strip()) == "never"
    default = run_cli("run", "create", "-c", "j", server=cp, check=True)
    assert pull_policy_of(cp, default.stdout.strip()) == "missing"  # the control plane's default

    spec = tmp_path / "run.yaml"
    spec.write_text("job:\n  codespec: j\npullPolicy: Always\n")
    from_file = run_cli("run", "create", "-f", str(spec), server=cp, check=True)
    assert pull_policy_of(cp, from_file.stdout.strip()) == "always"
    overridden = run_cli(
        "run", "create", "-f", str(spec), "--pull", "MISSING", server=cp, check=True
    )
    assert pull_policy_of(cp, overridden.stdout.strip()) == "missing"  # flags win over the file
    shown = run_cli("run", "show", from_file.stdout.strip(), server=cp, check=True).stdout
    assert "  pull:     always" in shown

    bad_flag = run_cli("run", "create", "-c", "j", "--pull", "sometimes", server=cp)
    assert bad_flag.returncode == 2 and "--pull" in one_line(bad_flag)
    for text, fragment in [
        ("pullPolicy: sometimes", "pullPolicy: 'sometimes' is not a pull policy"),
        ("pullPolicy: 3", "pullPolicy: expected a string"),
        ("pullpolicy: always", "(did you mean 'pullPolicy'?)"),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(f"job:\n  codespec: j\n{text}\n")
        result = run_cli("run", "create", "-f", str(path), server=cp)
        assert result.returncode == 1 and fragment in one_line(result), result.stderr
    listed = json.loads(run_cli("run", "list", "-o", "json", server=cp, check=True).stdout)
    assert len(listed) == 4  # the refused ones stored nothing


def test_default_pull_policy_flag(tmp_path: Path) -> None:
    cp = start_process(tmp_path / "cp.db", extra=["--default-pull-policy", "always"])
    try:
        run_cli("codespec", "create", "j", "--image", "busybox", server=cp, check=True)
        created = run_cli("run", "create", "-c", "j", server=cp, check=True)
        assert pull_policy_of(cp, created.stdout.strip()) == "always"
    finally:
        cp.stop()
    bad = subprocess.run(
        [str(BIN / "muster-controlplane"), "--insecure", "--default-pull-policy", "sometimes"],
        capture_output=True,
        text=True,
        env=isolated_env(tmp_path),
        timeout=30,
    )
    assert bad.returncode == 2 and "--default-pull-policy" in one_line(bad)


# -- a run that pulls with the stored credentials ----------------------------------------


def one_line_batch(start: apb.StartContainer, text: str) -> apb.LogBatch:
    """A log batch with one stdout line of `start`'s replica."""
    entry = apb.LogEntry(
        run_id=start.run_id,
        role=start.role,
        replica=0,
        time=Timestamp(seconds=1_800_000_000),
        stream=rpb.LOG_STREAM_STDOUT,
        text=text,
        sequence=0,
    )
    return apb.LogBatch(entries=[entry])


async def assert_password_nowhere(cp: Process, run_id: str, outputs: list[str]) -> None:
    """The stored password is in none of `outputs`, the run's JSON, its logs (which
    do have the app's line), the registry list or the control plane's log."""
    as_json = (await cli(cp, "run", "show", run_id, "-o", "json")).stdout
    logs = (await cli(cp, "run", "logs", run_id)).stdout
    registries = (await cli(cp, "registry", "list", "-o", "yaml")).stdout
    everything = [*outputs, as_json, logs, registries]
    assert "hello from the app" in logs
    assert not any(PASSWORD in text for text in everything)
    log = (cp.db.parent / "controlplane.log").read_text()
    assert f"event=registry_login registry={REGISTRY} username=bob" in log  # the right file
    assert "event=run_placed" in log
    assert PASSWORD not in log


async def test_a_run_pulls_with_the_stored_login_and_the_password_stays_secret(
    debug_cp: Process, nodes: list[Node]
) -> None:
    cp = debug_cp
    login = await asyncio.to_thread(
        cli_stdin, cp, PASSWORD, "registry", "login", REGISTRY, "-u", "bob", "--password-stdin"
    )
    assert login.returncode == 0, login.stderr
    assert (await cli(cp, "codespec", "create", "app", "--image", PRIVATE)).returncode == 0
    nodes.append(await join(cp, "puller", "cpu"))
    node = nodes[0]
    created = await cli(cp, "run", "create", "-c", "app", "--pull", "always")
    run_id = created.stdout.strip()

    start = (await node.agent.next("start_container")).start_container
    assert start.image == PRIVATE and start.pull_policy == rpb.PULL_POLICY_ALWAYS
    assert [(c.registry, c.username, c.password) for c in start.registry_credentials] == [
        (REGISTRY, "bob", PASSWORD)
    ]
    node.heartbeat()
    node.agent.send(
        container_status=status(
            start,
            rpb.CONTAINER_STATE_PULLING,
            pull_bytes_done=45_000_000,
            pull_bytes_total=120_000_000,
        )
    )
    shown = await until_cli(
        cp, ("run", "show", run_id), lambda r: "pulling (45 MB of 120 MB)" in r.stdout, "progress"
    )
    assert "IMAGE DIGEST" in shown.stdout
    node.agent.send(
        container_status=status(start, rpb.CONTAINER_STATE_RUNNING, image_digest=DIGEST)
    )
    node.agent.send(log_batch=one_line_batch(start, "hello from the app"))
    node.agent.send(
        container_status=status(start, rpb.CONTAINER_STATE_EXITED, exit_code=0, image_digest=DIGEST)
    )
    done = await until_cli(
        cp,
        ("run", "show", run_id),
        lambda r: r.stdout.startswith(f"run {run_id}: Succeeded"),
        "end",
    )
    row = next(line for line in done.stdout.splitlines() if line.startswith("job-0"))
    assert row.split()[1:3] == ["puller", "exited"] and row.endswith(DIGEST)
    watch = await cli(cp, "run", "watch", run_id)
    assert watch.returncode == 0 and f"run {run_id}: Succeeded" in watch.stdout

    await assert_password_nowhere(cp, run_id, [done.stdout, watch.stdout])


# -- warming nodes -------------------------------------------------------------------------


async def test_image_pull_and_list_one_line_per_node(
    cp_process: Process, nodes: list[Node]
) -> None:
    cp = cp_process
    nothing = await cli(cp, "image", "pull", "busybox")
    assert nothing.returncode == 1
    assert one_line(nothing).startswith("error: there is no Ready node in the cluster")

    nodes.append(await join(cp, "a-fast", "cpu"))
    nodes.append(await join(cp, "b-silent", "cpu"))
    fast = nodes[0].agent

    async def answer_pulls() -> None:
        order = (await fast.next("pull_image")).pull_image
        fast.send(
            image_pulled=apb.ImagePulled(request_id=order.request_id, digest=DIGEST, pulled=True)
        )

    helper = asyncio.create_task(answer_pulls())
    pulled = await cli(cp, "image", "pull", "busybox", "--pool", "cpu", "--timeout", "3s")
    await helper
    assert pulled.returncode == 1
    assert pulled.stdout.splitlines() == [
        f"a-fast: pulled {DIGEST}",
        "b-silent: failed: node b-silent did not answer within 3s",
    ]
    assert one_line(pulled) == "error: the pull of busybox failed on 1 of 2 nodes"

    async def answer_list() -> None:
        ask = (await fast.next("list_images")).list_images
        fast.send(
            images_listed=apb.ImagesListed(
                request_id=ask.request_id,
                images=[
                    apb.NodeImage(
                        tags=["docker.io/library/busybox:latest"],
                        digest=DIGEST,
                        size_bytes=4_300_000,
                    )
                ],
            )
        )

    helper = asyncio.create_task(answer_list())
    listed = await cli(cp, "image", "list", "--node", "a-fast")
    await helper
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == [
        "a-fast",
        "docker.io/library/busybox:latest",
        DIGEST,
        "4.3",
        "MB",
    ]
    unknown = await cli(cp, "image", "list", "--node", "nobody")
    assert unknown.returncode == 1 and "The node 'nobody' was not found" in one_line(unknown)
    bad = await cli(cp, "image", "pull", "busybox", "--timeout", "soon")
    assert bad.returncode == 2 and "--timeout" in one_line(bad)


# -- progress lines (pure) ---------------------------------------------------------------


def _run(*replicas: rpb.Replica, status: int = rpb.RUN_STATUS_PENDING) -> rpb.Run:
    return rpb.Run(id=4, status=status, replicas=list(replicas))


def test_progress_lines_show_pulling_with_bytes() -> None:
    worker = rpb.REPLICA_ROLE_WORKER
    run = _run(
        rpb.Replica(
            role=worker,
            index=0,
            state=rpb.CONTAINER_STATE_PULLING,
            pull_bytes_done=20_000_000,
            pull_bytes_total=60_000_000,
        ),
        rpb.Replica(
            role=worker,
            index=1,
            state=rpb.CONTAINER_STATE_PULLING,
            pull_bytes_done=25_000_000,
            pull_bytes_total=60_000_000,
        ),
        rpb.Replica(role=worker, index=2, state=rpb.CONTAINER_STATE_RUNNING, ready=True),
        rpb.Replica(role=rpb.REPLICA_ROLE_JOB, index=0),
    )
    assert progress_line(run) == (
        "run 4: Pending - workers ready 1/3 - pulling image on 2 of 3 workers (45 MB of 120 MB)"
    )
    job_only = _run(
        rpb.Replica(role=rpb.REPLICA_ROLE_JOB, index=0, state=rpb.CONTAINER_STATE_PULLING),
        status=rpb.RUN_STATUS_RUNNING,
    )
    assert progress_line(job_only) == "run 4: Running - pulling the job's image"
    text = describe(run)
    assert "pulling (20 MB of 60 MB)" in text and "IMAGE DIGEST" in text


def test_insecure_control_plane_keeps_the_key_beside_its_database(tmp_path: Path) -> None:
    cp = start_process(tmp_path / "data" / "cp.db", secure=False)
    try:
        login = cli_stdin(
            cp, PASSWORD, "registry", "login", REGISTRY, "-u", "bob", "--password-stdin"
        )
        assert login.returncode == 0, login.stderr
        key = tmp_path / "data" / "registry.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert not (tmp_path / "data" / "state").exists()
        listed = run_cli("registry", "list", server=cp, check=True).stdout
        assert listed.split() == ["REGISTRY", "USERNAME", REGISTRY, "bob"]
    finally:
        cp.stop()
