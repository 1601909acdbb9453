"""`muster run create` retries a control plane that is unavailable for a
moment, with one request id per invocation: exactly one run is created."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import BIN, free_port, isolated_env, run_cli, start_process, wait_for


@contextmanager
def refusing(port: int) -> Iterator[list[int]]:
    """A listener on `port` that hangs up on every connection (a control plane
    that is not up yet); yields the count of connections it refused."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    server.settimeout(0.1)
    refused = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()
            refused[0] += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield refused
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_run_create_retries_until_the_control_plane_is_back(tmp_path: Path) -> None:
    db, port = tmp_path / "cp.db", free_port()
    first = start_process(db, port, secure=False)
    try:
        run_cli("codespec", "create", "j", "--image", "img", server=first.address, check=True)
    finally:
        first.stop()
    env = {**isolated_env(), "MUSTER_SERVER": first.address}
    with refusing(port) as refused:
        creator = subprocess.Popen(
            [str(BIN / "muster"), "run", "create", "-c", "j"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The CLI has tried (and been refused) at least twice before the control plane is up.
            wait_for(lambda: refused[0] >= 2, 15, "the CLI to try a control plane that is down")
        except BaseException:
            creator.kill()
            creator.wait()
            raise
    second = start_process(db, port, secure=False)
    try:
        out, err = creator.communicate(timeout=60)
        assert creator.returncode == 0, err
        run_id = int(out.strip())
        listed = run_cli("run", "list", "-o", "json", server=second.address, check=True).stdout
        assert [r["id"] for r in json.loads(listed)] == [run_id]  # numeric, as Tyger prints ids
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        second.stop()
