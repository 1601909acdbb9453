"""The real `muster` command against a real `muster-controlplane` process."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import run_cli, start_process


def test_create_prints_version_and_is_idempotent(cp_process) -> None:
    srv = cp_process
    args = ["codespec", "create", "demo", "--image", "localhost/x:1", "-e", "A=1"]
    assert run_cli(*args, server=srv).stdout == "1\n"
    assert run_cli(*args, server=srv).stdout == "1\n"
    changed = run_cli(
        "codespec", "create", "demo", "--image", "localhost/x:1", "-e", "A=2", server=srv
    )
    assert changed.stdout == "2\n"


def test_bad_input_one_line_nonzero_nothing_stored(cp_process, tmp_path: Path) -> None:
    srv = cp_process
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("image: x\nresources:\n  request:\n    cpu: 1\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("image: [x\n")
    cases = {
        ("codespec", "create", "Bad_Name", "--image", "x"): "not a valid name",
        (
            "codespec",
            "create",
            "j",
            "--image",
            "x",
            "--endpoint",
            "http=80",
        ): "cannot declare endpoints",
        (
            "codespec",
            "create",
            "w",
            "-k",
            "worker",
            "--image",
            "x",
            "-i",
            "in",
        ): "cannot declare buffers",
        ("codespec", "create", "u", "-f", str(unknown)): "unknown field 'resources.request'",
        ("codespec", "create", "b", "-f", str(broken)): "not valid YAML",
        ("codespec", "create", "p", "--image", "x", "--endpoint", "http=x"): "not a number",
        ("codespec", "show", "nothere"): "was not found",
    }
    for args, fragment in cases.items():
        result = run_cli(*args, server=srv)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert result.stdout == ""
    listed = run_cli("codespec", "list", "-o", "json", server=srv, check=True)
    assert json.loads(listed.stdout) == []


def test_missing_version_names_latest(cp_process) -> None:
    srv = cp_process
    run_cli("codespec", "create", "x", "--image", "i", server=srv, check=True)
    result = run_cli("codespec", "show", "x", "--version", "7", server=srv)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: The version '7' of codespec 'x' was not found. The latest version is '1'."
    )


WORKER_FILE = {
    "kind": "worker",
    "image": "from-file",
    "maxReplicas": 4,
    "env": {"A": "1", "N": 5},
    "endpoints": {"http": 8080},
    "resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
}
# Flags over WORKER_FILE: the image, the env, the args.
FLAGS_OVER_FILE = ("--image", "from-flag", "-e", "B=2", "--", "python3", "-m", "http.server")
# What WORKER_FILE with FLAGS_OVER_FILE makes, written with flags alone.
SAME_BY_FLAGS = (
    *("-k", "worker", "--image", "from-flag", "--max-replicas", "4", "-e", "B=2"),
    *("--endpoint", "http=8080", "--cpu-request", "1000m", "--memory-request", "1024Mi"),
    *("--", "python3", "-m", "http.server"),
)
WITH_COMMAND = ("--image", "i", "--command", "--format", "json", "--", "sh", "-c", "echo hi")


def test_file_flags_override_and_outputs(cp_process, tmp_path: Path) -> None:
    srv = cp_process
    spec = tmp_path / "worker.yaml"
    spec.write_text(yaml.safe_dump(WORKER_FILE))
    out = run_cli(
        "codespec", "create", "w", "-f", str(spec), *FLAGS_OVER_FILE, server=srv, check=True
    )
    assert out.stdout == "1\n"
    shown = json.loads(
        run_cli("codespec", "show", "w", "-o", "json", server=srv, check=True).stdout
    )
    assert shown["image"] == "from-flag"
    assert shown["kind"] == "worker"
    assert shown["maxReplicas"] == 4
    assert shown["env"] == {"B": "2"}  # --env replaces the file's env, as in Tyger
    assert shown["endpoints"] == {"http": 8080}
    assert shown["args"] == ["python3", "-m", "http.server"]
    assert shown["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    # the same content written differently is no new version
    again = run_cli("codespec", "create", "w", *SAME_BY_FLAGS, server=srv, check=True)
    assert again.stdout == "1\n"
    as_yaml = yaml.safe_load(run_cli("codespec", "show", "w", "-o", "yaml", server=srv).stdout)
    assert as_yaml["version"] == 1
    command = run_cli("codespec", "create", "c", *WITH_COMMAND, server=srv, check=True)
    assert json.loads(command.stdout)["command"] == ["sh", "-c", "echo hi"]
    table = run_cli("codespec", "list", server=srv, check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "KIND", "IMAGE", "CREATED"]
    assert [row.split()[0] for row in table[1:]] == ["c", "w"]


def test_unreachable_server_is_named(tmp_path: Path) -> None:
    result = run_cli("codespec", "list", server="127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot reach the muster control plane at 127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_restart_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "data" / "cp.db"
    first = start_process(db)
    try:
        run_cli(
            "codespec",
            "create",
            "keep",
            "--image",
            "i",
            "-e",
            "A=1",
            server=first,
            check=True,
        )
        run_cli(
            "codespec",
            "create",
            "keep",
            "--image",
            "i",
            "-e",
            "A=2",
            server=first,
            check=True,
        )
    finally:
        first.stop()
    assert first.proc.returncode == 0  # graceful SIGTERM shutdown
    second = start_process(db)
    try:
        shown = json.loads(
            run_cli(
                "codespec",
                "show",
                "keep",
                "--version",
                "1",
                "-o",
                "json",
                server=second,
                check=True,
            ).stdout
        )
        assert shown["env"] == {"A": "1"}
        assert (
            run_cli("codespec", "create", "keep", "--image", "i", "-e", "A=2", server=second).stdout
            == "2\n"
        )
    finally:
        second.stop()
