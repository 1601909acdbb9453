"""Buffers in runs on real Podman, driven the way people use them:
`producer | muster run exec ... | consumer`.

- the buffers example (examples/buffers/) with 3 workers: the output bytes
  are exactly the ones computed here, independently, and --logs go to stderr;
- data trickling through stdin reaches stdout while stdin is still open;
- a job that exits 1: exec exits 1 with "Run failed", the output buffer is failed;
- a job that never opens its output pipe: an empty, complete buffer;
- cancel marks the outputs failed.

The refusals that need no containers (multiple unbound buffers, bad -b) are
in tests/cli/test_cli_exec_pipes.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import subprocess
import time

from tests.conftest import BIN, REPO, isolated_env, wait_for
from tests.e2e.conftest import Cluster

EXAMPLE = REPO / "examples" / "buffers"
FAILED = "the buffer is in a permanently failed state"


def muster(cluster: Cluster, *args: str, stdin: bytes = b"", timeout: float = 60):
    """The real `muster` with bytes in and out."""
    return subprocess.run(
        [str(BIN / "muster"), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**isolated_env(), **cluster.cp.env()},
    )


def only_run(cluster: Cluster) -> int:
    runs = json.loads(cluster.cli("run", "list", "-o", "json", check=True).stdout)
    assert len(runs) == 1, runs
    return int(runs[0]["id"])


def buffer_of(cluster: Cluster, run_id: int, parameter: str) -> str:
    buffers = dict(cluster.get_run(run_id).buffers)
    assert parameter in buffers, buffers
    return buffers[parameter]


def read_ended(cluster: Cluster, buffer_id: str) -> subprocess.CompletedProcess | None:
    """`muster buffer read ID` if the buffer has ended (complete or failed);
    None while it still waits for data."""
    try:
        return muster(cluster, "buffer", "read", buffer_id, timeout=8)
    except subprocess.TimeoutExpired:
        return None


def wait_failed(cluster: Cluster, buffer_id: str) -> str:
    """Wait until reading the buffer reports it failed; returns that error line."""

    def failed() -> str | None:
        result = read_ended(cluster, buffer_id)
        if result is None or result.returncode == 0:
            return None
        return result.stderr.decode()

    line = wait_for(failed, 30, f"buffer {buffer_id} to be marked failed", 0.5)
    assert FAILED in line and line.count("\n") == 1, line
    return line


def pipe_codespec(cluster: Cluster, name: str, script: str) -> None:
    """A job with buffers `input` and `output` running `sh -c SCRIPT` (busybox)."""
    cluster.shell_codespec(name, script, "-i", "input", "-o", "output")


def expected_example_output(data: bytes, workers: int) -> bytes:
    """What the example must print, computed without its code: record i
    (0-based) is hashed by worker i mod N."""
    out = []
    for i, record in enumerate(data.splitlines()):
        digest = hashlib.sha256(record).hexdigest().encode()
        out.append(digest + b" " + str(i % workers).encode() + b" " + record + b"\n")
    return b"".join(out)


def test_the_buffers_example_with_three_workers(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    cluster.codespec("buffers-worker", EXAMPLE / "worker.yaml")
    cluster.codespec("buffers-job", EXAMPLE / "job.yaml")
    records = [f"record {i} {'x' * (i % 97)}".encode() for i in range(3000)]
    records += [b"", b"\xff\xfe not utf-8", b"tab\tand spaces  "]
    data = b"\n".join(records) + b"\n"

    started = time.monotonic()
    result = muster(
        cluster, "run", "exec", "-f", str(EXAMPLE / "run.yaml"), "--logs", stdin=data, timeout=90
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == expected_example_output(data, 3)
    # --logs went to stderr: the job's own lines, nothing of them on stdout
    logs = result.stderr.decode()
    assert f"sent {len(records)} records to 3 workers" in logs
    assert f"wrote {len(records)} answers" in logs
    run_id = only_run(cluster)
    assert cluster.run_json(run_id)["status"] == "Succeeded"
    # the output buffer stays readable, complete, after the run
    output = read_ended(cluster, buffer_of(cluster, run_id, "output"))
    assert output is not None and output.returncode == 0 and output.stdout == result.stdout
    print(f"\nexample: {len(data)} bytes in, {len(result.stdout)} out, exec took {took:.1f} s")


def test_trickling_stdin_reaches_stdout_before_stdin_ends(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    pipe_codespec(cluster, "passthrough", 'cat "$INPUT_PIPE" > "$OUTPUT_PIPE"')
    proc = subprocess.Popen(
        [str(BIN / "muster"), "run", "exec", "-c", "passthrough"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**isolated_env(), **cluster.cp.env()},
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first line\n")
        proc.stdin.flush()  # and keep stdin open: the writer must flush on its own
        seen = b""
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"first line\n" not in seen:
                left = deadline - time.monotonic()
                assert left > 0, f"nothing came through while stdin stayed open: {seen!r}"
                if sel.select(timeout=left):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    assert chunk, "exec closed stdout early: " + proc.stderr.read().decode()
                    seen += chunk
        proc.stdin.write(b"second line\n")
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() must not flush it
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert seen + rest == b"first line\nsecond line\n"


def test_a_job_that_exits_1_fails_the_run_and_its_output(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    pipe_codespec(
        cluster, "breaks", 'cat "$INPUT_PIPE" > /dev/null; echo partial > "$OUTPUT_PIPE"; exit 1'
    )
    result = muster(cluster, "run", "exec", "-c", "breaks", stdin=b"some input\n")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("error: Run failed: "), err
    assert "exited with code 1" in err, err
    run_id = only_run(cluster)
    assert cluster.run_json(run_id)["status"] == "Failed"
    wait_failed(cluster, buffer_of(cluster, run_id, "output"))
    cluster.wait_no_containers(run_id)


def test_a_job_that_never_opens_its_output_gives_an_empty_complete_buffer(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    pipe_codespec(cluster, "silent", 'cat "$INPUT_PIPE" > /dev/null; echo done reading')
    result = muster(cluster, "run", "exec", "-c", "silent", "--logs", stdin=b"ignored\n" * 100)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert "done reading" in result.stderr.decode()
    run_id = only_run(cluster)
    output = read_ended(cluster, buffer_of(cluster, run_id, "output"))
    assert output is not None and output.returncode == 0, output
    assert output.stdout == b""


def test_cancel_marks_the_outputs_failed(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    # out-a is open (and written to) when the run is canceled, out-b never opened;
    # $(OUT-A_PIPE) is expanded before the shell runs ('-' stays in the name)
    cluster.shell_codespec(
        "waits", "exec 3> $(OUT-A_PIPE); echo started >&3; sleep 300", "-o", "out-a,out-b"
    )
    run_id = cluster.create_run("-c", "waits")
    cluster.wait_run(run_id, statuses={"Running"}, timeout=30)
    assert cluster.cli("run", "cancel", str(run_id)).returncode == 0
    assert cluster.wait_run(run_id)["status"] == "Canceled"
    for parameter in ("out-a", "out-b"):
        wait_failed(cluster, buffer_of(cluster, run_id, parameter))
    cluster.wait_no_containers(run_id)


def test_a_bound_input_is_left_alone_and_stdin_is_not_read(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    pipe_codespec(cluster, "passthrough", 'cat "$INPUT_PIPE" > "$OUTPUT_PIPE"')
    buffer_id = muster(cluster, "buffer", "create").stdout.decode().strip()
    written = muster(cluster, "buffer", "write", buffer_id, stdin=b"from the buffer\n")
    assert written.returncode == 0, written.stderr.decode()
    result = muster(
        cluster, "run", "exec", "-c", "passthrough", "-b", f"input={buffer_id}",
        stdin=b"from stdin: must not be read\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"from the buffer\n"
    assert buffer_of(cluster, only_run(cluster), "input") == buffer_id


def test_ctrl_c_while_stdin_feeds_the_run_cancels_it(make_cluster) -> None:
    cluster = make_cluster({"a": ["cpu"]})
    pipe_codespec(cluster, "passthrough", 'cat "$INPUT_PIPE" > "$OUTPUT_PIPE"')
    proc = subprocess.Popen(
        [str(BIN / "muster"), "run", "exec", "-c", "passthrough"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**isolated_env(), **cluster.cp.env()},
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"half a stream\n")
        proc.stdin.flush()  # stdin stays open: the run waits for more
        run_id = wait_for(
            lambda: json.loads(cluster.cli("run", "list", "-o", "json").stdout),
            20,
            "the run to be created",
        )[0]["id"]
        cluster.wait_run(int(run_id), statuses={"Running"}, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert f"run {run_id} canceled" in err.decode()
    assert cluster.wait_run(int(run_id))["status"] == "Canceled"
    # the input was cut short: marked failed, as is the output
    wait_failed(cluster, buffer_of(cluster, int(run_id), "input"))
    wait_failed(cluster, buffer_of(cluster, int(run_id), "output"))
    cluster.wait_no_containers(int(run_id))
