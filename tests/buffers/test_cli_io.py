"""`muster buffer read|write` with a URL and with a file holding one (real processes)."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.buffers.conftest import in_an_hour

CODE = "from muster_cli.buffer_io import buffer_{0}; buffer_{0}()"


async def cli(verb: str, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    env = {**os.environ, "MUSTER_CONFIG": os.devnull + ".absent"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CODE.format(verb), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out, err


async def test_write_stdin_read_stdout_and_access_files(plane, buffer_id, tmp_path) -> None:
    url = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    data = os.urandom(300_000)
    code, _, err = await cli("write", url, "-b", "64Ki", "-p", "4", stdin=data)
    assert code == 0, err
    access = tmp_path / "read.access"
    access.write_text(plane.access_url(buffer_id, writable=False, expires_at=in_an_hour()) + "\n")
    code, out, err = await cli("read", str(access))
    assert (code, out) == (0, data), err
    target = tmp_path / "out.bin"
    code, _, err = await cli("read", str(access), "-o", str(target), "--dop", "2")
    assert code == 0 and target.read_bytes() == data, err


async def test_errors_are_one_line(plane, buffer_id, tmp_path) -> None:
    url = plane.access_url(buffer_id, writable=False, expires_at=in_an_hour())
    code, _, err = await cli("write", url, stdin=b"x")
    assert code == 1
    assert err.decode().strip() == "error: the access url does not allow write access"
    writable = plane.access_url(buffer_id, writable=True, expires_at=in_an_hour())
    source = tmp_path / "in.bin"
    source.write_bytes(b"abc")
    assert (await cli("write", writable, "-i", str(source)))[0] == 0
    code, _, err = await cli("write", writable, "-i", str(source))
    assert (code, err.decode().strip()) == (1, "error: buffer cannot be overwritten")
    code, _, err = await cli("write", writable, "-b", "lots", stdin=b"x")
    assert code == 2 and b"block size" in err
