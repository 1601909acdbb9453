"""A Tyger user's commands, files and output against muster (issue 11): every
Tyger flag and alias of `codespec` and `run`, Tyger's file fields, its JSON
shapes and its durations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import click
import pytest
import yaml

from muster_cli.app import comma_list, comma_pairs
from muster_cli.specfile import SpecError, codespec_from_dict, run_from_dict
from muster_cli.timeparse import duration_seconds, parse_duration, parse_since
from tests.conftest import run_cli

# -- durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300s", Decimal(300)),
        ("1.5h", Decimal(5400)),
        ("2h45m", Decimal(9900)),
        ("1h30m10.5s", Decimal("5410.5")),
        ("500ms", Decimal("0.5")),
        ("1µs", Decimal("0.000001")),
        ("0", Decimal(0)),
        ("90", Decimal(90)),  # muster: plain seconds
        ("1d12h", Decimal(129600)),  # muster: days
    ],
)
def test_go_durations_and_muster_extras(text: str, seconds: Decimal) -> None:
    assert duration_seconds(text) == seconds


def test_a_bad_duration_is_one_clear_line() -> None:
    for bad in ("", "h", "1x", "1h 2m", "1hh", "abc"):
        with pytest.raises(click.BadParameter, match=r"is not a duration; use e.g. 300s, 1\.5h"):
            parse_duration(bad)
    assert parse_duration("1.9s") == 1  # truncated, as Tyger does


def test_since_takes_times_and_durations() -> None:
    utc = datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert parse_since("2026-11-25T10:00:00Z").seconds == int(utc.timestamp())
    local = datetime(2026, 11, 25, 10).astimezone()  # no zone: local time, as in Tyger
    assert parse_since("2026-11-25T10:00:00").seconds == int(local.timestamp())
    assert parse_since("10m").seconds > 0
    with pytest.raises(click.BadParameter, match="neither a time"):
        parse_since("yesterday-ish")


# -- comma lists ------------------------------------------------------------------


def test_comma_lists_as_pflag_reads_them() -> None:
    assert comma_pairs(("A=1,B=2",)) == ("A=1", "B=2")
    assert comma_pairs(("A=1,2",)) == ("A=1,2",)  # one '=': one pair, commas included
    assert comma_pairs(('"A=1,2",B=3',)) == ("A=1,2", "B=3")
    assert comma_list(("a,b", "c")) == ("a", "b", "c")


# -- files ------------------------------------------------------------------------


def test_codespec_file_fields_of_tyger() -> None:
    spec = codespec_from_dict(
        {
            "kind": "Worker",
            "name": "w",
            "version": 3,
            "createdAt": "2026-11-30T12:00:00Z",
            "image": "x",
            "identity": "",
            "sockets": [],
            "env": None,
            "resources": {"gpu": "1", "shm": "1Gi"},
            "endpoints": {"http": 80},
        }
    )
    assert (spec.name, spec.version, spec.resources.gpu, spec.resources.shm) == ("w", 0, 1, "1Gi")
    with pytest.raises(SpecError, match="identity: muster has no workload identity provider"):
        codespec_from_dict({"image": "x", "identity": "my-identity"})
    with pytest.raises(SpecError, match="sockets: muster does not connect buffers"):
        codespec_from_dict({"image": "x", "sockets": [{"port": 9000, "inputBuffer": "in"}]})
    with pytest.raises(SpecError, match=r"unknown field 'resources\.shmm'"):
        codespec_from_dict({"image": "x", "resources": {"shmm": "1Gi"}})


def test_run_file_fields_of_tyger() -> None:
    run = run_from_dict(
        {
            "id": "2",
            "kind": "user",
            "eTag": "abc",
            "status": "Succeeded",
            "job": {
                "codespec": {"kind": "job", "name": "a", "version": 2, "image": "x"},
                "tags": {"t": 1},
                "bufferTtl": "1.00:00",
                "replicas": 2,
            },
            "worker": {"codespec": "w/versions/3", "nodePool": "gpu"},
            "cluster": "west",
            "bufferAccessTtl": "0.01:00:00",
            "timeoutSeconds": 60,
        }
    )
    assert run.job.codespec.inline.image == "x" and not run.job.codespec.inline.name
    assert dict(run.job.tags) == {"t": "1"} and run.job.buffer_ttl == "1.00:00"
    assert run.worker.codespec.named == "w/versions/3"
    assert (run.cluster, run.buffer_access_ttl) == ("west", "0.01:00:00")
    with pytest.raises(SpecError, match="kind: 'system' runs are Tyger's own"):
        run_from_dict({"kind": "system", "job": {"codespec": "a"}})
    with pytest.raises(SpecError, match=r"unknown field 'worker\.tags'"):
        run_from_dict({"job": {"codespec": "a"}, "worker": {"codespec": "w", "tags": {}}})
    with pytest.raises(SpecError, match="is not a time span"):
        run_from_dict({"job": {"codespec": "a", "bufferTtl": "1 day"}})


# -- the real CLI against a real control plane ----------------------------------------


def _ok(cp, *args: str) -> str:
    return run_cli(*args, server=cp, check=True).stdout


def test_codespec_create_as_tyger(cp_process, tmp_path: Path) -> None:
    cp = cp_process
    spec = tmp_path / "hello.yml"
    spec.write_text("name: hello\nkind: worker\nimage: localhost/x:1\nendpoints: {http: 80}\n")
    # the name comes from the file; a kind in the file wins over -k
    assert _ok(cp, "codespec", "create", "-f", str(spec), "-k", "job") == "1\n"
    shown = json.loads(_ok(cp, "codespecs", "get", "hello"))  # aliases, JSON by default
    assert shown["kind"] == "worker" and shown["name"] == "hello" and shown["version"] == 1
    # NAME wins over the file's name; container args after -- with no NAME
    assert _ok(cp, "codespec", "create", "other", "-f", str(spec)) == "1\n"
    assert _ok(cp, "codespec", "create", "-f", str(spec), "--", "serve", "-p", "80") == "2\n"
    assert json.loads(_ok(cp, "codespec", "show", "hello"))["args"] == ["serve", "-p", "80"]
    # every flag, Tyger's way: comma lists, -r, quantities for --gpu and --shm
    _ok(
        cp, "codespec", "create", "full", "--image", "localhost/x:1", "-r", "3",
        "-e", "A=1,B=2", "-e", "C=x,y", "-i", "in1,in2", "-o", "out", "--gpu", "1",
        "--shm", "256Mi", "--cpu-request", "500m", "--memory-request", "1Gi",
        "--cpu-limit", "1", "--memory-limit", "2Gi", "--identity", "",
        "--command", "--", "sh", "-c", "true",
    )  # fmt: skip
    full = json.loads(_ok(cp, "codespec", "show", "full", "--version", "1"))
    assert full["env"] == {"A": "1", "B": "2", "C": "x,y"}
    assert full["maxReplicas"] == 3 and full["command"] == ["sh", "-c", "true"]
    assert full["buffers"] == {"inputs": ["in1", "in2"], "outputs": ["out"]}
    assert full["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
        "gpu": "1",
        "shm": "256Mi",
    }
    worker = _ok(cp, "codespec", "create", "w2", "-k", "worker", "--image", "i",
                 "--endpoint", "a=1,b=2")  # fmt: skip
    assert worker == "1\n"
    assert json.loads(_ok(cp, "codespec", "show", "w2"))["endpoints"] == {"a": 1, "b": 2}
    # list: -p, -l, alphabetical
    names = [c["name"] for c in json.loads(_ok(cp, "codespec", "list", "-o", "json"))]
    assert names == sorted(names)
    listed = json.loads(_ok(cp, "codespec", "list", "-p", "h", "-l", "1", "-o", "json"))
    assert [c["name"] for c in listed] == ["hello"]


def test_codespec_show_round_trips_into_create(cp_process, tmp_path: Path) -> None:
    cp = cp_process
    _ok(cp, "codespec", "create", "rt", "--image", "i", "-e", "A=1", "--shm", "1Gi", "--gpu", "1")
    for fmt in ("yaml", "json"):
        out = tmp_path / f"rt.{fmt}"
        out.write_text(_ok(cp, "codespec", "show", "rt", "-o", fmt))
        assert _ok(cp, "codespec", "create", "-f", str(out)) == "1\n", fmt


def test_unsupported_fields_are_one_line(cp_process, tmp_path: Path) -> None:
    cp = cp_process
    ident = tmp_path / "ident.yaml"
    ident.write_text("image: i\nidentity: my-id\n")
    for args, fragment in (
        (("codespec", "create", "x", "-f", str(ident)), "identity: muster has no workload"),
        (("codespec", "create", "x", "--image", "i", "--identity", "id"), "workload identity"),
        (("codespec", "create", "--image", "i"), "a codespec name is required"),
        (("codespec", "create", "x", "y", "--image", "i"), "container arguments go at the end"),
        (("codespec", "create", "x", "--image", "i", "--gpu", "0.5"), "not a whole number"),
        (("codespec", "create", "x", "--image", "i", "--shm", "lots"), "resources.shm"),
        (("run", "create", "-c", "x", "--timeout", "1x"), "is not a duration"),
        (("run", "list", "--status", "Sleeping"), "'Sleeping' is not a status"),
    ):
        result = run_cli(*args, server=cp)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, lines)


def test_run_flags_and_json_as_tyger(cp_process, tmp_path: Path) -> None:
    cp = cp_process
    _ok(cp, "codespec", "create", "j", "--image", "localhost/x:1")
    _ok(cp, "codespec", "create", "w", "-k", "worker", "--image", "localhost/x:1")
    run_id = _ok(
        cp, "run", "create", "-c", "j", "--version", "1", "-r", "2", "--node-pool", "",
        "--worker-codespec", "w", "--worker-version", "1", "--worker-replicas", "2",
        "--timeout", "1.5h", "--tag", "a=1,b=2", "--tag", "c=3", "--cluster", "west",
        "--pull", "--buffer-access-ttl", "0.01:00:00",
    ).strip()  # fmt: skip
    shown = json.loads(_ok(cp, "runs", "get", run_id, "-o", "json"))
    assert shown["id"] == int(run_id) and shown["status"] == "Pending" and shown["eTag"]
    assert shown["timeoutSeconds"] == 5400 and shown["tags"] == {"a": "1", "b": "2", "c": "3"}
    assert shown["cluster"] == "west" and shown["bufferAccessTtl"] == "0.01:00:00"
    assert shown["pullPolicy"] == "always"
    assert shown["job"]["replicas"] == 2 and shown["worker"]["replicas"] == 2
    # the codespec a run resolved, as Tyger's server writes it
    assert {k: shown["job"]["codespec"][k] for k in ("kind", "name", "version")} == {
        "kind": "job",
        "name": "j",
        "version": 1,
    }
    # run show output is a run file: a new run of the same spec
    again = tmp_path / "again.yaml"
    again.write_text(_ok(cp, "run", "show", run_id, "-o", "yaml"))
    second = _ok(cp, "run", "create", "-f", str(again)).strip()
    copy = json.loads(_ok(cp, "run", "show", second, "-o", "json"))
    assert second != run_id
    for key in ("timeoutSeconds", "tags", "cluster", "bufferAccessTtl"):
        assert copy[key] == shown[key], key
    assert copy["job"]["codespec"]["image"] == "localhost/x:1"
    assert copy["worker"]["codespec"]["kind"] == "worker"
    # list and counts: -s, -l, --status a,b, canceling
    listed = json.loads(_ok(cp, "run", "list", "-s", "10m", "-l", "1", "-o", "json"))
    assert [r["id"] for r in listed] == [int(second)]
    pending = json.loads(_ok(cp, "run", "list", "--status", "pending,running", "-o", "json"))
    assert len(pending) == 2
    assert json.loads(_ok(cp, "run", "list", "--status", "canceling", "-o", "json")) == []
    assert json.loads(_ok(cp, "run", "count", "-s", "1h", "-o", "json")) == {"Pending": 2}
    # stop: Tyger's alias of cancel; watch prints Tyger's JSON lines
    _ok(cp, "run", "stop", run_id)
    watched = run_cli("run", "watch", run_id, "-o", "json", server=cp).stdout
    meta = [json.loads(x) for x in watched.splitlines()]
    assert meta[-1]["status"] == "Canceled" and meta[-1]["id"] == int(run_id)
    assert "job" not in meta[-1]
    full = run_cli("run", "watch", run_id, "--full-resource", server=cp)
    assert full.returncode == 1  # the outcome: canceled
    assert json.loads(full.stdout.splitlines()[-1])["job"]["codespec"]["name"] == "j"


def test_run_set_tags_with_etag(cp_process) -> None:
    cp = cp_process
    _ok(cp, "codespec", "create", "j", "--image", "localhost/x:1")
    run_id = _ok(cp, "run", "create", "-c", "j", "--tag", "a=1").strip()
    etag = json.loads(_ok(cp, "run", "show", run_id, "-o", "json"))["eTag"]
    updated = json.loads(_ok(cp, "run", "set", run_id, "--tag", "b=2", "--etag", etag))
    assert updated["tags"] == {"a": "1", "b": "2"} and updated["eTag"] != etag
    stale = run_cli("run", "set", run_id, "--tag", "c=3", "--etag", etag, server=cp)
    assert stale.returncode == 1 and "changed since it was read" in stale.stderr
    cleared = json.loads(_ok(cp, "run", "set", run_id, "--clear-tags", "--tag", "only=1"))
    assert cleared["tags"] == {"only": "1"}
    # a finished run's tags can change too
    _ok(cp, "run", "cancel", run_id)
    done = json.loads(_ok(cp, "run", "set", run_id, "--tag", "after=1"))
    assert done["status"] == "Canceled" and done["tags"] == {"only": "1", "after": "1"}
    missing = run_cli("run", "set", "999", "--tag", "a=1", server=cp)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_yaml_shapes_are_plain_documents(cp_process) -> None:
    cp = cp_process
    _ok(cp, "codespec", "create", "j", "--image", "localhost/x:1")
    doc = yaml.safe_load(_ok(cp, "codespec", "show", "j", "-o", "yaml"))
    assert list(doc)[:4] == ["kind", "name", "version", "createdAt"]
