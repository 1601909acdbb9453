"""What an agent must run for one replica: a pure function of the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.core.capacity import limit_of
from controlplane.core.envvars import build_env, compact_json, endpoint_variable, expand
from controlplane.core.images import (
    DEFAULT_PULL_POLICY,
    Credential,
    PullPolicy,
    names_registry,
    registry_of,
)
from controlplane.core.quantities import memory_bytes
from controlplane.core.run_buffers import Pipe, parameters, pipe_env
from controlplane.core.runs import Run, hostname


@dataclass(frozen=True)
class ContainerSpec:
    """Everything an agent needs to start one replica idempotently."""

    run_id: int
    role: str
    index: int
    name: str
    hostname: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cpu_limit_millis: int = 0
    memory_limit_bytes: int = 0
    shm_size_bytes: int = 0  # /dev/shm (resources.shm); 0: the runtime's default
    restart_always: bool = False  # a worker restarted in place when its process exits
    endpoints: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    hosts: dict[str, str] = field(default_factory=dict)
    """/etc/hosts entries: worker name -> IP address."""
    gpu_devices: tuple[str, ...] = ()
    """CDI names of the GPU devices the replica holds (Podman adds their device nodes)."""
    pull_policy: PullPolicy = DEFAULT_PULL_POLICY
    """Always concrete: the run's policy, else the control plane's default."""
    registry_credentials: tuple[Credential, ...] = ()
    """The control plane's credentials for the image's registry, only when the node may pull."""
    cluster_id: str = ""
    """The cluster's id: the agent labels the container with it (muster.cluster)."""
    buffers: tuple[Pipe, ...] = ()
    """A job's buffers: one FIFO each, and the URL the agent copies it with."""


def peer_hosts(run: Run, role: str, index: int, node_ips: Mapping[str, str]) -> dict[str, str]:
    """/etc/hosts entries that make worker names resolve without DNS.

    A job gets every worker (the IP its agent reported once it was ready,
    else its node's IP); a worker gets the other workers whose node IP is
    known at its start (host-port mode: the workers' nodes' advertise
    addresses). Names whose IP is unknown are left to DNS."""
    hosts = {}
    for w in run.workers:
        if role == "worker" and w.index == index:
            continue
        ip = (w.host_ip if role == "job" else "") or node_ips.get(w.node or "", "")
        if ip:
            hosts[hostname(run.id, "worker", w.index)] = ip
    return hosts


def discovery_env(run: Run, role: str, index: int) -> dict[str, str]:
    """TYGER_* variables, and a job's `<NAME>_PIPE` ones. Jobs get worker
    addresses in worker index order."""
    env = {"TYGER_RUN_ID": str(run.id)}
    if role == "worker":
        env["TYGER_WORKER_INDEX"] = str(index)
        return env
    env.update(pipe_env(parameters(run.job.codespec)))
    if run.worker is None:
        return env
    workers = run.workers
    env["TYGER_WORKER_NODES"] = compact_json([hostname(run.id, "worker", w.index) for w in workers])
    for endpoint, port in run.worker.codespec.endpoints.items():
        addresses = [
            w.addresses.get(endpoint) or f"{hostname(run.id, 'worker', w.index)}:{port}"
            for w in workers
        ]
        env[endpoint_variable(endpoint)] = compact_json(addresses)
    return env


def container_spec(
    run: Run,
    role: str,
    index: int,
    node_ips: Mapping[str, str] | None = None,
    default_pull_policy: PullPolicy = DEFAULT_PULL_POLICY,
    credentials: Mapping[str, Credential] | None = None,
    cluster_id: str = "",
    pipes: Sequence[Pipe] = (),
) -> ContainerSpec:
    """The container for replica (role, index) of `run`; `node_ips` maps node
    names to the IP address their host-port endpoints are published on;
    `credentials` maps registries to the logins the control plane holds (only
    the one for this image's registry is passed on, and none when the policy
    forbids pulling); `cluster_id` is the cluster's (default: the run's);
    `pipes` are the job's buffers with their URLs (workers have none).

    `$(NAME)` in the command and args is expanded once the whole env is
    known (discovery and pipe variables included), with the same rules as
    env values (Kubernetes': `$$(` escapes, unknown names stay as written)."""
    target = run.worker if role == "worker" else run.job
    assert target is not None
    spec = target.codespec
    limits = limit_of(spec)
    replica = run.replica(role, index)
    env = build_env(spec.env, discovery_env(run, role, index))
    return ContainerSpec(
        run_id=run.id,
        role=role,
        index=index,
        name=run.container_name(role, index),
        hostname=hostname(run.id, role, index),
        image=spec.image,
        command=tuple(expand(part, env) for part in spec.command),
        args=tuple(expand(part, env) for part in spec.args),
        working_dir=spec.working_dir or "",
        env=env,
        cpu_limit_millis=limits.cpu_millis,
        memory_limit_bytes=limits.memory_bytes,
        shm_size_bytes=memory_bytes(spec.resources.shm) if spec.resources.shm else 0,
        restart_always=role == "worker" and target.restart,
        endpoints=dict(spec.endpoints) if role == "worker" else {},
        generation=run.generation,
        hosts=peer_hosts(run, role, index, node_ips or {}),
        gpu_devices=replica.gpu_devices if replica is not None else (),
        pull_policy=(policy := run.pull_policy or default_pull_policy),
        registry_credentials=credentials_for(spec.image, policy, credentials or {}),
        cluster_id=cluster_id or run.cluster,
        buffers=tuple(pipes) if role == "job" else (),
    )


def credentials_for(
    image: str, policy: PullPolicy, credentials: Mapping[str, Credential]
) -> tuple[Credential, ...]:
    """What a node needs to pull `image` under `policy`: the login for the
    image's registry, if any; nothing when it must not pull, and nothing for a
    short name (`busybox`, `team/app:1`: no registry host, see
    `names_registry`), which a Docker Hub login reaches only when written
    `docker.io/...`."""
    if policy == "never" or not names_registry(image):
        return ()
    login = credentials.get(registry_of(image))
    return (login,) if login is not None else ()
