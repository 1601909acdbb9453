"""The Run message `muster run create|exec` send: a run file with Tyger's flags on top."""

from __future__ import annotations

from typing import Any

import click

from muster.common.timespan import TimeSpanError, format_timespan, is_timespan, timespan_seconds
from muster.v1 import run_pb2 as pb
from muster_cli.app import INT32, POSITIVE, comma_pairs, key_values
from muster_cli.specfile import PULL_POLICIES, RESTART_POLICIES, SpecError, load_run, time_span
from muster_cli.timeparse import parse_duration


def _reference(name: str, version: int | None) -> str:
    return f"{name}/versions/{version}" if version else name


def timeout_seconds(text: str) -> int:
    """--timeout as Tyger takes it (a Go duration, `1.5h`), or seconds; at least 1 s."""
    seconds = parse_duration(text, "--timeout")
    if not 1 <= seconds <= INT32:
        raise click.BadParameter(
            f"'{text}' is out of range (1s to 68 years)", param_hint="--timeout"
        )
    return seconds


def buffer_ttl(text: str) -> str:
    """--buffer-ttl as Tyger's TimeSpan (kept as written), or a duration with
    units (`90m`), written as a TimeSpan since job.bufferTtl is one."""
    try:
        if is_timespan(text):
            timespan_seconds(text)
            return text.strip()
    except TimeSpanError as exc:
        raise click.BadParameter(str(exc), param_hint="--buffer-ttl") from None
    if not any(c.isalpha() for c in text):
        raise click.BadParameter(f"'{text}' is not a time span", param_hint="--buffer-ttl")
    seconds = parse_duration(text, "--buffer-ttl")
    if seconds <= 0:
        raise click.BadParameter(f"'{text}' is not a positive lifetime", param_hint="--buffer-ttl")
    return format_timespan(seconds)


def build_run(file: str | None, flags: dict[str, Any]) -> pb.Run:
    """The Run message from a file (optional) with flags on top, as Tyger
    merges them: --tag adds to the file's tags, the other flags replace."""
    run = load_run(file) if file else pb.Run()
    if flags["codespec"]:
        run.job.codespec.named = _reference(flags["codespec"], flags["version"])
    elif flags["version"]:
        raise click.BadParameter("--version needs --codespec", param_hint="--version")
    if flags["replicas"] is not None:
        run.job.replicas = flags["replicas"]
    if flags["node_pool"]:
        run.job.node_pool = flags["node_pool"]
    if flags["worker_codespec"]:
        run.worker.codespec.named = _reference(flags["worker_codespec"], flags["worker_version"])
    elif flags["worker_version"]:
        raise click.BadParameter(
            "--worker-version needs --worker-codespec", param_hint="--worker-version"
        )
    if flags["worker_replicas"] is not None:
        run.worker.replicas = flags["worker_replicas"]
    if flags["worker_node_pool"]:
        run.worker.node_pool = flags["worker_node_pool"]
    if flags["worker_restart"]:
        run.worker.restart_policy = RESTART_POLICIES[flags["worker_restart"].lower()]
    if flags["timeout"]:
        run.timeout_seconds = timeout_seconds(flags["timeout"])
    run.tags.update(key_values(comma_pairs(flags["tag"]), "--tag"))
    if flags["cluster"]:
        run.cluster = flags["cluster"]
    if flags["buffer_access_ttl"]:
        try:
            run.buffer_access_ttl = time_span(flags["buffer_access_ttl"], "--buffer-access-ttl")
        except SpecError as exc:
            detail = str(exc).split(": ", 1)[1]
            raise click.BadParameter(detail, param_hint="--buffer-access-ttl") from None
    if flags["pull"]:
        run.pull_policy = PULL_POLICIES[flags["pull"].lower()]
    run.buffers.update(key_values(comma_pairs(flags["buffer"]), "--buffer"))
    run.job.tags.update(key_values(comma_pairs(flags["buffer_tag"]), "--buffer-tag"))
    if flags["buffer_ttl"]:
        run.job.buffer_ttl = buffer_ttl(flags["buffer_ttl"])
    if not run.job.codespec.WhichOneof("reference"):
        raise click.UsageError("the job needs a codespec: use -c NAME or -f FILE")
    if run.HasField("worker") and not run.worker.codespec.WhichOneof("reference"):
        raise click.UsageError("the worker needs a codespec: use --worker-codespec NAME")
    return run


def run_options(fn: Any) -> Any:
    """Tyger's run flags, shared by create and exec."""
    options = [
        click.option("-f", "--file", "file", help="Run YAML file (flags override its values)."),
        click.option("-c", "--codespec", help="Job codespec name."),
        click.option("--version", type=POSITIVE, help="Job codespec version."),
        click.option("-r", "--replicas", type=POSITIVE, help="Job replicas (default 1)."),
        click.option("--node-pool", help="Node pool of the job."),
        click.option("--worker-codespec", help="Worker codespec name."),
        click.option("--worker-version", type=POSITIVE, help="Worker codespec version."),
        click.option("--worker-replicas", type=POSITIVE, help="Worker replicas (default 1)."),
        click.option("--worker-node-pool", help="Node pool of the workers."),
        click.option(
            "--worker-restart",
            type=click.Choice(["never", "always"], case_sensitive=False),
            help="When a worker's process exits: never restart it, the run fails (default, "
            "for MPI-style jobs), or always restart it in place (Tyger's behaviour).",
        ),
        click.option(
            "--timeout",
            help="Run timeout: a Go duration (300s, 1.5h, 2h45m) or seconds (default 12h).",
        ),
        click.option("--tag", multiple=True, metavar="K=V", help="Tag (repeatable, or a=1,b=2)."),
        click.option("--cluster", help="Tyger's target cluster: stored only (one cluster here)."),
        click.option(
            "--pull",
            type=click.Choice(list(PULL_POLICIES), case_sensitive=False),
            is_flag=False,
            flag_value="always",
            help="When nodes pull the images: missing (only what a node lacks), always "
            "(also --pull alone, as in Tyger), never (default: the control plane's).",
        ),
        click.option("--buffer-access-ttl", hidden=True, help="D.HH:MM:SS, stored."),
        click.option(
            "-b",
            "--buffer",
            multiple=True,
            metavar="NAME=ID",
            help="Bind the job's buffer parameter NAME to buffer ID (repeatable, or a=ID,b=ID); "
            "parameters left out get new buffers.",
        ),
        click.option(
            "--buffer-tag",
            multiple=True,
            metavar="K=V",
            help="Tag of the buffers made for the run (repeatable, or a=1,b=2; job.tags).",
        ),
        click.option(
            "--buffer-ttl",
            metavar="D.HH:MM:SS",
            help="Lifetime of the buffers made for the run (job.bufferTtl; default: none).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
