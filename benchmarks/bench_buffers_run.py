"""Benchmark: bytes through a run, `producer | muster run exec | consumer`.

Starts a control plane (with its embedded data plane) and one agent as
processes on the local Podman, makes a job codespec that passes its input
through (`cat $(INPUT_PIPE) > $(OUTPUT_PIPE)`), then feeds `--size` MiB into
`muster run exec`'s stdin and reads its stdout, checking every byte (CRC-32
on both sides). Prints the time to the first output byte and the throughput,
counted from the start of exec (run creation and container start included)
and from the first output byte (the steady stream).

The bytes travel: stdin -> exec's writer -> data plane (input buffer) ->
agent -> FIFO -> cat -> FIFO -> agent -> data plane (output buffer) -> exec's
reader -> stdout; every byte is uploaded twice and downloaded twice.

    .venv/bin/python benchmarks/bench_buffers_run.py [--size 256] [--block-size 4Mi]

Needs scripts/setup.sh to have run (Podman, localhost/muster-busybox). Everything
it starts is stopped and removed when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import datetime
from pathlib import Path

from podman_cleanup import remove_podman_leftovers, stop_processes

BIN = Path(sys.executable).parent
NODE = "bench-buffers"
NETWORK = "muster-bench-buffers"
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(server: str, tmp: str) -> dict[str, str]:
    """A plaintext client of this control plane, ignoring the user's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    return {**env, "MUSTER_SERVER": server, "XDG_CONFIG_HOME": tmp, "MUSTER_STATE_DIR": tmp}


def muster(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [str(BIN / "muster"), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


def produce(stdin, size: int, crc: list[int]) -> None:
    """Write `size` bytes of random-looking data (a random MiB, varied per MiB)."""
    base = bytearray(os.urandom(CHUNK))
    value, left, n = 0, size, 0
    try:
        while left > 0:
            base[:8] = n.to_bytes(8, "little")  # no two MiB alike
            piece = bytes(base[: min(CHUNK, left)])
            stdin.write(piece)
            value = zlib.crc32(piece, value)
            left, n = left - len(piece), n + 1
    finally:
        stdin.close()
    crc.append(value)


def one_run(env: dict[str, str], size: int, block_size: str) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "muster"), "run", "exec", "-c", "passthrough", "--block-size", block_size],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sent: list[int] = []
    producer = threading.Thread(target=produce, args=(proc.stdin, size, sent), daemon=True)
    producer.start()
    got, value, first = 0, 0, None
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, CHUNK):
        if first is None:
            first = time.monotonic()
        got += len(chunk)
        value = zlib.crc32(chunk, value)
    err = proc.stderr.read().decode()
    code = proc.wait()
    ended = time.monotonic()
    producer.join(timeout=30)
    if code != 0:
        raise RuntimeError(f"run exec failed ({code}): {err.strip()}")
    if got != size or [value] != sent:
        raise RuntimeError(f"output differs: {got} of {size} bytes, crc {value} vs {sent}")
    assert first is not None
    return {"ttfb": first - started, "total": ended - started, "stream": ended - first}


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:.0f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256, help="MiB through the run (256)")
    parser.add_argument("--block-size", default="4Mi", help="exec's --block-size (4Mi)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    size = args.size * 1024 * 1024
    server = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = env_for(server, tmp)
        try:
            start_cluster(server, tmp, env, procs)
            muster(
                env, "codespec", "create", "passthrough", "--image",
                "localhost/muster-busybox:latest", "-i", "input", "-o", "output",
                "--command", "--", "sh", "-c", "cat $(INPUT_PIPE) > $(OUTPUT_PIPE)",
            )  # fmt: skip
            print(
                f"real Podman, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores: "
                f"{args.size} MiB through a pass-through job, blocks of {args.block_size}"
            )
            for i in range(args.runs):
                t = one_run(env, size, args.block_size)
                print(
                    f"run {i + 1}: first output byte after {t['ttfb']:.2f} s; "
                    f"{mbps(size, t['total'])} from the start of exec ({t['total']:.1f} s), "
                    f"{mbps(size, t['stream'])} from the first output byte"
                )
        finally:
            clean_up(procs)


def start_cluster(
    server: str, tmp: str, env: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    """A control plane (with its data plane) on `server` and one agent, added to
    `procs` as they start, their logs in `tmp`; returns when the agent is Ready."""
    cp = subprocess.Popen(
        [
            str(BIN / "muster-controlplane"), "--insecure", "--listen", server,
            "--db", f"{tmp}/cp.db", "--data-listen", "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=open(f"{tmp}/cp.log", "w"),
    )  # fmt: skip
    procs.append(cp)
    assert cp.stdout is not None
    cp.stdout.readline()  # "listening on ..."
    procs.append(
        subprocess.Popen(
            [
                str(BIN / "muster-agent"), "--insecure", "--server", server,
                "--node-name", NODE, "--network", NETWORK,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{tmp}/agent.log", "w"),
        )
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not any(
        n["name"] == NODE and n["status"] == "Ready"
        for n in json.loads(muster(env, "node", "list", "-o", "json"))
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not become Ready")
        time.sleep(0.2)


def clean_up(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the processes, latest first; remove the agent's containers and network."""
    stop_processes(procs, timeout=20)
    remove_podman_leftovers([f"muster.node={NODE}"], [NETWORK])


if __name__ == "__main__":
    main()
