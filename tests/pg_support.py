"""A PostgreSQL server that the test session owns, and a fresh database per test.

The machines run no PostgreSQL service; ``scripts/setup.sh`` installs Debian's
``postgresql`` package and the tests start their own server: ``initdb`` and
``pg_ctl`` (as the ``postgres`` user when the tests run as root: PostgreSQL
refuses to run as root) in a temporary directory, listening on a free port of
127.0.0.1 and on a Unix socket in that directory, with durability off (a test
database need not survive a power loss). One server per session
(``pg_server``), started only when a test asks for it; each test that uses
``postgres_url`` gets a database of its own, dropped afterwards. The server is
stopped and its directory deleted at the end of the session, failed or not.
Without the binaries (``/usr/lib/postgresql/*/bin``, or ``$MUSTER_PG_BIN``)
these tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "postgres"
_DURABILITY_OFF = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries on this machine, or None."""
    override = os.environ.get("MUSTER_PG_BIN")
    candidates = [override] if override else glob.glob("/usr/lib/postgresql/*/bin")
    found = [Path(c) for c in candidates if (Path(c) / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _owner() -> list[str]:
    """The command prefix that runs PostgreSQL's tools as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        pytest.skip("running as root, and there is no 'postgres' user to run PostgreSQL as")
    return ["runuser", "-u", SUPERUSER, "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running server: its directory, port and binaries."""

    directory: Path
    port: int
    bin: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement outside any transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop at once (nothing here needs a clean shutdown) and delete everything."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *_owner(),
                    self.tool("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                check=False,
                timeout=60,
                cwd=self.directory,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(durable: bool = False) -> PgServer:
    """initdb and start a server in a new temporary directory (a few seconds);
    `durable` keeps fsync on (benchmarks), tests do without it."""
    binaries = pg_bin()
    if binaries is None:
        pytest.skip(
            "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin); run scripts/setup.sh"
        )
    owner = _owner()
    directory = Path(tempfile.mkdtemp(prefix="muster-pg-"))
    if owner:
        user = pwd.getpwnam(SUPERUSER)
        os.chown(directory, user.pw_uid, user.pw_gid)
    server = PgServer(directory, 0, binaries)
    try:
        settings = ("-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync")
        _run([*owner, server.tool("initdb"), "-D", str(server.data), *settings], directory)
        for _ in range(3):  # another process may take the free port first
            server.port = _free_port()
            started = _pg_ctl_start(server, owner, durable)
            if started.returncode == 0:
                return server
        log = (directory / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")
    except BaseException:
        server.stop()
        raise


def _pg_ctl_start(
    server: PgServer, owner: list[str], durable: bool
) -> subprocess.CompletedProcess[str]:
    """`pg_ctl start` on the server's port, its socket and log in its directory."""
    directory = server.directory
    options = f"-p {server.port} -k {directory} -c listen_addresses=127.0.0.1 " + (
        "" if durable else _DURABILITY_OFF
    )
    until = ("-w", "-t", "60", "start")
    log = str(directory / "server.log")
    return subprocess.run(
        [*owner, server.tool("pg_ctl"), "-D", str(server.data), "-o", options, "-l", log, *until],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=directory,
    )


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, deleted at its end."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a database of this test's own, dropped after it."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        with contextlib.suppress(Exception):  # the server may be what the test broke
            pg_server.drop_database(name)
