"""`muster run exec` with buffers, against a real control plane process with
no agents: what is refused before a run exists (Tyger's multiple-unbound
errors, -o json with stdout carrying the output) and bad bindings the
control plane refuses at creation. Each is one line and exit code 1, and
leaves no run behind. The bytes themselves go through real runs in
tests/e2e/test_buffers_*.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Process, run_cli

MULTIPLE_INPUTS = "exec cannot be called if the job has multiple unmapped input buffers"
MULTIPLE_OUTPUTS = "exec cannot be called if the job has multiple unmapped output buffers"


def codespec(cp: Process, name: str, *flags: str) -> None:
    run_cli(
        "codespec", "create", name, "--image", "localhost/muster-busybox:latest", *flags,
        "--command", "--", "true", server=cp, check=True,
    )  # fmt: skip


def refused(cp: Process, *args: str) -> str:
    """The one error line of a command that must fail with exit code 1."""
    result = run_cli(*args, server=cp, timeout=60)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, (args, result.stderr)
    return result.stderr.strip()


def no_runs(cp: Process) -> bool:
    return json.loads(run_cli("run", "list", "-o", "json", server=cp, check=True).stdout) == []


def test_exec_refuses_two_unbound_inputs_or_outputs_before_creating(cp_process: Process) -> None:
    cp = cp_process
    codespec(cp, "two-in", "-i", "a,b", "-o", "out")
    codespec(cp, "two-out", "-i", "in", "-o", "x,y")
    assert refused(cp, "run", "exec", "-c", "two-in") == f"error: {MULTIPLE_INPUTS}"
    assert refused(cp, "run", "exec", "-c", "two-out") == f"error: {MULTIPLE_OUTPUTS}"
    # an exact version, and an inline codespec in a run file, are checked the same way
    assert refused(cp, "run", "exec", "-c", "two-in", "--version", "1").endswith(MULTIPLE_INPUTS)
    assert no_runs(cp)


def test_exec_refuses_json_output_when_stdout_carries_the_buffer(cp_process: Process) -> None:
    cp = cp_process
    codespec(cp, "pipe", "-i", "in", "-o", "out")
    line = refused(cp, "run", "exec", "-c", "pipe", "-o", "json")
    assert line == "error: -o json cannot be used: stdout carries the output buffer 'out'"
    assert no_runs(cp)


def test_exec_inline_codespec_with_two_unbound_outputs(cp_process: Process, tmp_path) -> None:
    cp = cp_process
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        "job:\n  codespec:\n    image: localhost/muster-busybox:latest\n"
        "    buffers: {inputs: [in], outputs: [a, b]}\n    command: [cat]\n"
    )
    assert refused(cp, "run", "exec", "-f", str(run_file)) == f"error: {MULTIPLE_OUTPUTS}"
    assert no_runs(cp)


def test_a_worker_codespec_cannot_declare_buffers(cp_process: Process) -> None:
    line = refused(
        cp_process, "codespec", "create", "w", "-k", "worker", "--image", "x:1", "-i", "in"
    )
    assert "a worker codespec cannot declare buffers" in line


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        ("in=aaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaaaa"),  # no such buffer
        ("nosuch=aaaaaaaaaaaaaaaaaaaaaaaaaa", "nosuch"),  # no such parameter
    ],
)
def test_exec_refuses_bad_bindings_in_one_line(
    cp_process: Process, binding: str, expected: str
) -> None:
    cp = cp_process
    codespec(cp, "pipe", "-i", "in", "-o", "out")
    line = refused(cp, "run", "exec", "-c", "pipe", "-b", binding)
    assert expected in line, line
    assert no_runs(cp)


def test_exec_takes_an_underscore_binding_as_unbound(cp_process: Process) -> None:
    cp = cp_process
    codespec(cp, "two-in", "-i", "a,b", "-o", "out")
    # Tyger's `_` (ephemeral) is unmapped: with `a=_`, both inputs are still unbound
    line = refused(cp, "run", "exec", "-c", "two-in", "-b", "a=_")
    assert line == f"error: {MULTIPLE_INPUTS}"
    assert no_runs(cp)
