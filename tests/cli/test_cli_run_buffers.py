"""`muster run create` binds buffers as Tyger's CLI does: -b NAME=ID
(repeatable, comma lists), --buffer-tag and --buffer-ttl for the buffers made
for the run; run files take job.buffers; refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from muster_cli.run_spec import buffer_ttl, build_run
from muster_cli.specfile import run_from_dict
from tests.conftest import Process, run_cli, start_process

FLAGS = {
    "codespec": "j",
    "version": None,
    "replicas": None,
    "node_pool": None,
    "worker_codespec": None,
    "worker_version": None,
    "worker_replicas": None,
    "worker_node_pool": None,
    "worker_restart": None,
    "timeout": None,
    "tag": (),
    "cluster": None,
    "buffer_access_ttl": None,
    "pull": None,
    "buffer": (),
    "buffer_tag": (),
    "buffer_ttl": None,
}
A, B = "a" * 26, "b" * 26


def test_buffer_flags_fill_the_run_message() -> None:
    flags = {
        **FLAGS,
        "buffer": (f"input={A},output={B}",),
        "buffer_tag": ("team=x,stage=2", "k=v"),
        "buffer_ttl": "1.02:00",
    }
    run = build_run(None, flags)
    assert dict(run.buffers) == {"input": A, "output": B}
    assert dict(run.job.tags) == {"team": "x", "stage": "2", "k": "v"}
    assert run.job.buffer_ttl == "1.02:00"
    assert buffer_ttl("90m") == "0.01:30:00" and buffer_ttl("1") == "1"
    for bad in ("1.25:00", "soon", "1.5", "-5m"):
        with pytest.raises(click.BadParameter):
            buffer_ttl(bad)
    with pytest.raises(click.BadParameter, match="is not KEY=VALUE"):
        build_run(None, {**FLAGS, "buffer": ("input",)})


def test_run_files_bind_buffers_under_the_job() -> None:
    run = run_from_dict({"job": {"codespec": "j", "buffers": {"input": A}, "bufferTtl": "02:00"}})
    assert dict(run.buffers) == {"input": A} and run.job.buffer_ttl == "02:00"


def _ok(cp: Process, *args: str) -> str:
    return run_cli(*args, server=cp, check=True).stdout


def _refused(cp: Process, *args: str) -> str:
    result = run_cli(*args, server=cp)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, (args, result.stderr)
    return result.stderr


def test_run_create_binds_and_makes_buffers(cp_process: Process, tmp_path: Path) -> None:
    cp = cp_process
    _ok(cp, "codespec", "create", "j", "--image", "localhost/x:1", "-i", "input", "-o", "output")
    given = _ok(cp, "buffer", "create").strip()
    created = json.loads(
        _ok(
            cp, "run", "create", "-c", "j", "-b", f"input={given}", "--buffer-tag", "team=x",
            "--buffer-ttl", "0.02:00", "-o", "json",
        )
    )  # fmt: skip
    bound = created["job"]["buffers"]
    assert bound["input"] == given and set(bound) == {"input", "output"}
    assert created["job"]["tags"] == {"team": "x"} and created["job"]["bufferTtl"] == "0.02:00"
    made = json.loads(_ok(cp, "buffer", "show", bound["output"]))
    assert made["tags"] == {"bufferName": "output", "team": "x"} and made["expiresAt"]
    # run show output is a run file: the same bindings again
    again = tmp_path / "again.yaml"
    again.write_text(_ok(cp, "run", "show", str(created["id"]), "-o", "yaml"))
    copy = json.loads(_ok(cp, "run", "create", "-f", str(again), "-o", "json"))
    assert copy["job"]["buffers"] == bound
    # refusals: one line each, nothing made
    before = _ok(cp, "buffer", "count")
    assert "Buffer argument 'nope' does not correspond to a buffer parameter" in _refused(
        cp, "run", "create", "-c", "j", "-b", f"nope={given}"
    )
    assert f"The buffer '{'a' * 26}' was not found" in _refused(
        cp, "run", "create", "-c", "j", "-b", f"input={'a' * 26}"
    )
    assert "does not share pipes across replicas" in _refused(
        cp, "run", "create", "-c", "j", "-r", "2"
    )
    assert _ok(cp, "buffer", "count") == before


def test_without_a_data_plane_runs_with_buffers_are_refused(tmp_path: Path) -> None:
    cp = start_process(tmp_path / "cp.db", extra=["--data-listen", "off"])
    try:
        _ok(cp, "codespec", "create", "j", "--image", "localhost/x:1", "-o", "output")
        assert "runs without a data plane" in _refused(cp, "run", "create", "-c", "j")
    finally:
        cp.stop()
