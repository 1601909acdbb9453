"""`muster run ...` against a real control plane with no agents: admission,
inline codespecs, list/counts filters and paging, cancel, errors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import run_cli


def test_runs_wait_list_count_and_cancel(cp_process, tmp_path: Path) -> None:
    srv = cp_process
    run_cli("codespec", "create", "j", "--image", "img", server=srv, check=True)
    ids = [
        int(
            run_cli(
                "run",
                "create",
                "-c",
                "j",
                "--tag",
                f"batch={b}",
                "--tag",
                "team=x",
                server=srv,
                check=True,
            ).stdout
        )
        for b in ("one", "two", "two")
    ]
    assert ids == sorted(ids) and len(set(ids)) == 3
    shown = json.loads(
        run_cli("run", "show", str(ids[0]), "-o", "json", server=srv, check=True).stdout
    )
    assert shown["status"] == "Pending"
    assert shown["statusReason"] == "waiting for a ready node in any pool"
    assert shown["timeoutSeconds"] == 43200
    assert shown["job"]["codespec"]["version"] == 1  # the resolved codespec, as Tyger

    assert run_cli("run", "cancel", str(ids[1]), server=srv, check=True).stdout == (
        f"run {ids[1]} canceled\n"
    )
    again = run_cli("run", "cancel", str(ids[1]), server=srv)
    assert again.returncode == 1 and "already finished (Canceled)" in again.stderr

    def listed(*args: str) -> list[int]:
        out = run_cli("run", "list", "-o", "json", *args, server=srv, check=True).stdout
        return [int(r["id"]) for r in json.loads(out)]

    assert listed() == ids[::-1]  # newest first
    assert listed("--tag", "batch=two") == [ids[2], ids[1]]
    assert listed("--tag", "batch=two", "--status", "Pending") == [ids[2]]
    assert listed("--status", "Canceled", "--status", "Succeeded") == [ids[1]]
    assert listed("--limit", "2") == [ids[2], ids[1]]
    counts = yaml.safe_load(run_cli("run", "counts", "-o", "yaml", server=srv, check=True).stdout)
    assert counts == {"Pending": 2, "Canceled": 1}
    table = run_cli("run", "counts", "--tag", "batch=one", server=srv, check=True).stdout
    assert table.split() == ["STATUS", "COUNT", "Pending", "1", "Total", "1"]


def test_inline_codespecs_and_strict_run_files(cp_process, tmp_path: Path) -> None:
    srv = cp_process
    good = tmp_path / "run.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "job": {"codespec": {"image": "img", "args": ["go"]}},
                "worker": {"codespec": {"image": "img", "endpoints": {"http": 80}}, "replicas": 2},
                "timeoutSeconds": 60,
                "tags": {"a": "b"},
            }
        )
    )
    run_id = run_cli("run", "create", "-f", str(good), server=srv, check=True).stdout.strip()
    shown = json.loads(run_cli("run", "show", run_id, "-o", "json", server=srv).stdout)
    assert shown["worker"]["codespec"]["kind"] == "worker"
    assert shown["worker"]["codespec"]["endpoints"] == {"http": 80}
    assert shown["job"]["codespec"]["args"] == ["go"]
    assert [r["hostname"] for r in shown["replicas"]] == [
        f"run-{run_id}-worker-0",
        f"run-{run_id}-worker-1",
        f"run-{run_id}-job-0",
    ]

    cases = {
        "job:\n  codespec: j\n  replica: 2\n": "'job.replica' (did you mean 'replicas'?)",
        "job:\n  codespec: j\ntimeout: 5\n": "unknown field 'timeout'",
        "job:\n  codespec:\n    image: i\n    endpoints: {http: 80}\n": "job.codespec.endpoints",
        "job:\n  codespec: nothere\n": "The codespec 'nothere' was not found.",
        "job:\n  codespec: j\ntags: {'bad key': x}\n": "tags.bad key",
        "job:\n  codespec: j\ntimeoutSeconds: 0\n": "timeoutSeconds",
    }
    run_cli("codespec", "create", "j", "--image", "img", server=srv, check=True)
    for i, (text, fragment) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        result = run_cli("run", "create", "-f", str(path), server=srv)
        assert result.returncode == 1, text
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            text,
            result.stderr,
        )
    listed = json.loads(run_cli("run", "list", "-o", "json", server=srv, check=True).stdout)
    assert len(listed) == 1  # the rejected ones stored nothing


def test_run_errors(cp_process) -> None:
    srv = cp_process
    missing = run_cli("run", "show", "99", server=srv)
    assert missing.returncode == 1 and "The run '99' was not found." in missing.stderr
    no_codespec = run_cli("run", "create", server=srv)
    assert no_codespec.returncode == 2 and "the job needs a codespec" in no_codespec.stderr
    bad_timeout = run_cli("run", "create", "-c", "j", "--timeout", "soon", server=srv)
    assert bad_timeout.returncode == 2 and "not a duration" in bad_timeout.stderr
    old_version = run_cli("run", "create", "-c", "j", "--version", "3", server=srv)
    assert old_version.returncode == 1 and "codespec 'j' was not found" in old_version.stderr


def test_out_of_range_numbers_are_one_line_usage_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("job:\n  codespec: j\n  replicas: 99999999999\n")
    cases = [
        ("run", "create", "-c", "j", "--timeout", "99999999999"),
        ("run", "create", "-c", "j", "-r", "99999999999"),
        ("run", "show", "99999999999999999999"),
        ("run", "logs", "1", "--tail", "99999999999"),
        ("run", "logs", "1", "--since", "99999999999d"),
        ("codespec", "create", "x", "--image", "i", "--endpoint", "a=999999999999"),
        ("codespec", "show", "x", "--version", "99999999999"),
        ("run", "create", "-f", str(big)),
    ]
    for args in cases:
        result = run_cli(*args, server="127.0.0.1:1")
        assert result.returncode in (1, 2), args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and ("range" in lines[0] or "too far" in lines[0]), (args, lines)


def test_worker_restart_policy_by_flag_and_file(cp_process, tmp_path: Path) -> None:
    srv = cp_process
    run_cli("codespec", "create", "j", "--image", "img", server=srv, check=True)
    run_cli("codespec", "create", "w", "--image", "img", "-k", "worker", server=srv, check=True)
    made = run_cli(
        "run", "create", "-c", "j", "--worker-codespec", "w", "--worker-restart", "always",
        server=srv, check=True,
    ).stdout.strip()  # fmt: skip
    shown = json.loads(run_cli("run", "show", made, "-o", "json", server=srv, check=True).stdout)
    assert shown["worker"]["restartPolicy"] == "Always"
    assert "restartPolicy" not in shown["job"]
    # What `run show` prints makes the same run again.
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(shown))
    again = run_cli("run", "create", "-f", str(tmp_path / "again.yaml"), server=srv, check=True)
    twin = run_cli("run", "show", again.stdout.strip(), "-o", "json", server=srv, check=True)
    assert json.loads(twin.stdout)["worker"]["restartPolicy"] == "Always"
    # Only workers restart; a policy muster does not know is one line.
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump({"job": {"codespec": "j", "restartPolicy": "Always"}})
    )
    refused = run_cli("run", "create", "-f", str(tmp_path / "job.yaml"), server=srv)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "job.restartPolicy: only workers can be restarted" in refused.stderr
    (tmp_path / "odd.yaml").write_text(
        yaml.safe_dump(
            {"job": {"codespec": "j"}, "worker": {"codespec": "w", "restartPolicy": "x"}}
        )
    )
    odd = run_cli("run", "create", "-f", str(tmp_path / "odd.yaml"), server=srv)
    assert odd.returncode != 0 and "'x' is not a restart policy; use Never or Always" in odd.stderr
