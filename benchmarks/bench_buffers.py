"""Throughput of buffer write and read through the embedded data plane.

The data plane runs in its own process (as beside a control plane), on
loopback. Two paths are measured:

  cli  `buffer write URL` fed by a pipe from `head -c SIZE /dev/zero`, then
       `buffer read URL > /dev/null`: the whole path a user sees.
  lib  write_buffer/read_buffer in this process, from and to memory: the
       library and the server without the pipe and the extra process.

    .venv/bin/python benchmarks/bench_buffers.py                 # 256 MiB, quick
    .venv/bin/python benchmarks/bench_buffers.py --size 1GiB     # the target: >= 200 MB/s each
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp
import yarl

from controlplane.dataplane import sas
from muster.common.buffers.client import ContainerClient
from muster.common.buffers.format import DEFAULT_BLOCK_SIZE, new_buffer_id, parse_block_size
from muster.common.buffers.reader import read_buffer
from muster.common.buffers.writer import write_buffer

REPO = pathlib.Path(__file__).resolve().parent.parent
CLI = "from muster_cli.buffer_io import buffer_{0}; buffer_{0}()"


class Plane:
    """A data plane subprocess and the means to make buffers in it."""

    def __init__(self, root: pathlib.Path) -> None:
        self.key_file = root / "key"
        self.key = sas.load_or_create_key(self.key_file)
        cmd = [sys.executable, "-m", "controlplane.dataplane.server", "--root", str(root / "dp")]
        cmd += ["--key-file", str(self.key_file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.stop()
            raise SystemExit("the data plane did not start")
        self.base = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def url(self, bid: str, sp: str) -> str:
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return f"{self.base}/containers/{bid}?{sas.sign_query(self.key, bid, sp, expires)}"

    async def new_buffer(self) -> str:
        bid = new_buffer_id()
        async with aiohttp.ClientSession() as http:
            async with http.put(yarl.URL(self.url(bid, "C"), encoded=True)) as resp:
                resp.raise_for_status()
        return bid


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:8.1f} MB/s  ({size / 2**20:.0f} MiB in {seconds:.2f} s)"


def run_cli(verb: str, url: str, shell_tail: str) -> float:
    """Time one CLI transfer in a shell pipeline; exit on failure."""
    code = shlex.quote(CLI.format(verb))
    cmd = f"{shell_tail.format(cli=f'{shlex.quote(sys.executable)} -c {code} {shlex.quote(url)}')}"
    start = time.perf_counter()
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"buffer {verb} failed ({done.returncode})")
    return elapsed


async def bench_cli(plane: Plane, size: int, block: str) -> None:
    bid = await plane.new_buffer()
    write = run_cli("write", plane.url(bid, "cr"), f"head -c {size} /dev/zero | {{cli}} -b {block}")
    print(f"cli  buffer write {rate(size, write)}")
    read = run_cli("read", plane.url(bid, "r"), "{cli} > /dev/null")
    print(f"cli  buffer read  {rate(size, read)}")


async def bench_lib(plane: Plane, size: int, block_size: int) -> None:
    bid = await plane.new_buffer()
    chunk = os.urandom(block_size)

    async def source() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            yield chunk[: min(left, block_size)]
            left -= block_size

    received = 0

    async def sink(data: bytes) -> None:
        nonlocal received
        received += len(data)

    async with ContainerClient(plane.url(bid, "cr")) as client:
        start = time.perf_counter()
        await write_buffer(client, source(), block_size=block_size, flush_interval=0)
        print(f"lib  write_buffer {rate(size, time.perf_counter() - start)}")
    async with ContainerClient(plane.url(bid, "r")) as client:
        start = time.perf_counter()
        await read_buffer(client, sink)
        print(f"lib  read_buffer  {rate(size, time.perf_counter() - start)}")
    assert received == size


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256Mi", help="bytes per transfer (256Mi, 1GiB)")
    parser.add_argument("--block-size", default="4Mi")
    parser.add_argument("--mode", choices=["cli", "lib", "both"], default="both")
    args = parser.parse_args()
    size = parse_block_size(args.size)
    block_size = parse_block_size(args.block_size) if args.block_size else DEFAULT_BLOCK_SIZE
    with tempfile.TemporaryDirectory(prefix="bench-buffers-") as tmp:
        plane = Plane(pathlib.Path(tmp))
        try:
            print(f"data plane pid {plane.proc.pid}; {os.cpu_count()} CPUs")
            if args.mode in ("cli", "both"):
                await bench_cli(plane, size, args.block_size)
            if args.mode in ("lib", "both"):
                await bench_lib(plane, size, block_size)
        finally:
            plane.stop()


if __name__ == "__main__":
    asyncio.run(main())
