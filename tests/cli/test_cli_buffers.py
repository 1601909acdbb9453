"""`muster buffer ...` against a real secure `muster-controlplane` process:
records, lifecycle and roles; the bytes through its embedded data plane
(HTTPS with the cluster CA); and, with `--data-listen off`, access is
UNAVAILABLE in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import Process, run_cli, start_process


def ok(cp: Process, *args: str, env: dict[str, str] | None = None) -> str:
    return run_cli("buffer", *args, server=cp, check=True, env=env).stdout


def refused(cp: Process, *args: str, env: dict[str, str] | None = None) -> str:
    """The one error line of a command that must fail with exit code 1."""
    result = run_cli("buffer", *args, server=cp, env=env)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, (args, result.stderr)
    return result.stderr


def test_create_show_list_count_with_tags_and_paging(cp_process: Process) -> None:
    cp = cp_process
    made = [
        ok(cp, "create", "--tag", f"n={i}", "--tag", "set=" + "ab"[i % 2]).strip() for i in range(5)
    ]
    assert all(len(i) == 26 for i in made) and len(set(made)) == 5
    full = json.loads(ok(cp, "create", "--tag", "x=1", "--ttl", "1.00:00", "--full-resource"))
    assert full["tags"] == {"x": "1"} and full["location"] == "local" and full["eTag"]
    assert "expiresAt" in full and "isSoftDeleted" not in full

    shown = json.loads(ok(cp, "show", made[0]))
    assert shown["id"] == made[0] and shown["tags"] == {"n": "0", "set": "a"}

    listed = json.loads(ok(cp, "list", "--tag", "set=a"))
    assert [b["id"] for b in listed] == [made[4], made[2], made[0]]  # newest first
    listed = json.loads(ok(cp, "list", "--tag", "set=a", "--exclude-tag", "n=2"))
    assert [b["id"] for b in listed] == [made[4], made[0]]
    everything = json.loads(ok(cp, "list"))
    assert len(everything) == 6
    two = json.loads(ok(cp, "list", "--limit", "2"))
    assert [b["id"] for b in two] == [b["id"] for b in everything[:2]]
    assert ok(cp, "count") == "6\n"
    assert ok(cp, "count", "--tag", "set=b") == "2\n"
    assert ok(cp, "count", "--soft-deleted") == "0\n"
    assert json.loads(ok(cp, "list", "--tag", "set=none")) == []


def test_set_needs_the_right_etag_and_changes_nothing_otherwise(cp_process: Process) -> None:
    cp = cp_process
    buffer_id = ok(cp, "create", "--tag", "a=1").strip()
    etag = json.loads(ok(cp, "show", buffer_id))["eTag"]
    changed = json.loads(ok(cp, "set", buffer_id, "--tag", "b=2", "--etag", etag))
    assert changed["tags"] == {"a": "1", "b": "2"} and changed["eTag"] != etag
    error = refused(cp, "set", buffer_id, "--clear-tags", "--etag", etag)
    assert "has changed" in error and "read it again" in error
    assert json.loads(ok(cp, "show", buffer_id)) == changed
    replaced = json.loads(ok(cp, "set", buffer_id, "--clear-tags", "--tag", "c=3", "--ttl", "1h"))
    assert replaced["tags"] == {"c": "3"} and "expiresAt" in replaced


def test_delete_hides_restore_brings_back_purge_removes(cp_process: Process) -> None:
    cp = cp_process
    one = ok(cp, "create", "--tag", "team=red").strip()
    ok(cp, "create", "--tag", "team=red")
    blue = ok(cp, "create", "--tag", "team=blue").strip()

    deleted = json.loads(ok(cp, "delete", one))
    assert deleted["id"] == one and deleted["isSoftDeleted"] is True
    assert "was not found" in refused(cp, "show", one)
    assert json.loads(ok(cp, "show", one, "--soft-deleted"))["id"] == one
    assert ok(cp, "count") == "2\n"

    restored = json.loads(ok(cp, "restore", one))
    assert restored["id"] == one and "isSoftDeleted" not in restored
    assert json.loads(ok(cp, "show", one))["tags"] == {"team": "red"}

    assert ok(cp, "delete", "--tag", "team=red", "--force") == "Deleted 2 buffers.\n"
    # Without a terminal, a bulk change needs --force; nothing happens.
    assert "add --force" in refused(cp, "purge", "--all")
    assert ok(cp, "count", "--soft-deleted") == "2\n"
    assert ok(cp, "restore", "--tag", "nope=x") == "No buffers found.\n"
    assert "not soft-deleted" in refused(cp, "purge", blue)
    assert ok(cp, "purge", "--all", "--force") == "Purged 2 buffers.\n"
    assert ok(cp, "count", "--soft-deleted") == "0\n"
    assert "was not found" in refused(cp, "show", one, "--soft-deleted")
    assert "--tag or --all" in run_cli("buffer", "delete", server=cp).stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("show", "nope"), "'nope' is not a buffer id"),
        (("show", "a" * 26), "the buffer 'aaaaaaaaaaaaaaaaaaaaaaaaaa' was not found"),
        (("create", "--tag", "bad key=1"), "tag keys are 1-128 characters"),
        (("create", "--tag", "k=" + "v" * 257), "tag values are 0-256 characters"),
        (("access", "a" * 26, "--ttl", "10s"), "an access URL lives 30-3600 seconds"),
        (("set", "a" * 26, "--tag", "a=b"), "was not found"),
        (("delete", "bad", "--force"), "is not a buffer id"),
    ],
)
def test_bad_input_is_one_clear_line(cp_process: Process, args: tuple, fragment: str) -> None:
    assert fragment in refused(cp_process, *args)


def test_bad_ttls_are_usage_errors(cp_process: Process) -> None:
    for ttl in ("1.24:00", "soon", "-5m", "1.2"):
        result = run_cli("buffer", "create", "--ttl", ttl, server=cp_process)
        assert result.returncode == 2 and "--ttl" in result.stderr, (ttl, result.stderr)
    assert run_cli("buffer", "count", server=cp_process).stdout == "0\n"


def test_access_without_a_data_plane_is_unavailable_in_one_line(tmp_path: Path) -> None:
    cp = start_process(tmp_path / "cp.db", extra=["--data-listen", "off"])
    try:
        buffer_id = ok(cp, "create").strip()
        error = refused(cp, "access", buffer_id, "-w")
        assert "no data plane configured" in error and "is it running" not in error
    finally:
        cp.stop()


def test_bytes_go_through_the_embedded_data_plane(cp_process: Process, tmp_path: Path) -> None:
    cp = cp_process
    buffer_id = ok(cp, "create").strip()
    data = os.urandom(5 * 1024 * 1024 + 7)
    (tmp_path / "in").write_bytes(data)
    ok(cp, "write", buffer_id, "-i", str(tmp_path / "in"), "--block-size", "1Mi")
    ok(cp, "read", buffer_id, "-o", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data
    assert "buffer cannot be overwritten" in refused(cp, "write", buffer_id, "-i", os.devnull)
    # An access URL works alone (no credentials), over HTTPS with the cluster CA.
    url = ok(cp, "access", buffer_id).strip()
    assert url.startswith("https://") and f"/containers/{buffer_id}?" in url
    (tmp_path / "url").write_text(url)
    again = run_cli("buffer", "read", str(tmp_path / "url"), "-o", str(tmp_path / "again"),
                    env={"MUSTER_CONFIG": str(cp.config)})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again").read_bytes() == data
    # A read-only URL cannot write a new buffer.
    other = ok(cp, "create").strip()
    (tmp_path / "ro").write_text(ok(cp, "access", other).strip())
    error = refused(cp, "write", str(tmp_path / "ro"), "-i", os.devnull)
    assert "does not allow write access" in error, error


def test_roles_reader_reads_user_creates_admin_deletes(cp_process: Process) -> None:
    cp = cp_process
    token = {
        role: run_cli("token", "create", role, "--role", role, server=cp, check=True).stdout.strip()
        for role in ("reader", "user")
    }
    reader, user = ({"MUSTER_TOKEN": token[r]} for r in ("reader", "user"))
    assert "CreateBuffer needs role user" in refused(cp, "create", env=reader)
    buffer_id = ok(cp, "create", "--tag", "by=user", env=user).strip()
    assert json.loads(ok(cp, "show", buffer_id, env=reader))["tags"] == {"by": "user"}
    assert ok(cp, "count", env=reader) == "1\n"
    assert "UpdateBuffer needs role user" in refused(
        cp, "set", buffer_id, "--tag", "a=b", env=reader
    )
    assert "DeleteBuffers needs role admin" in refused(cp, "delete", buffer_id, env=user)
    assert "RestoreBuffers needs role admin" in refused(cp, "restore", "--all", "--force", env=user)
    assert ok(cp, "count") == "1\n"  # nothing was deleted
    assert "buffers" in run_cli("buffers", "--help", server=cp).stdout  # Tyger's alias
