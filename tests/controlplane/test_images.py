"""Images, pure and local: registries of image references, pull policies in
starts, the state machine with pulling, the readiness clock, sealed registry
passwords (the database holds no plaintext)."""

from __future__ import annotations

import asyncio
import logging
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from controlplane.core import runs as lifecycle
from controlplane.core.codespec import Codespec
from controlplane.core.containers import container_spec, credentials_for
from controlplane.core.errors import FailedPrecondition, InvalidArgument, NotFound
from controlplane.core.images import (
    Credential,
    check_credential,
    check_registry,
    pull_policy,
    registry_of,
)
from controlplane.core.runs import Observation, StartReplica
from controlplane.security.sealing import Sealer, SealError
from controlplane.services.registries import RegistryService
from controlplane.store.documents import run_from_doc, run_to_doc
from controlplane.store.memory import MemoryStore
from controlplane.store.sqlite import SqliteStore
from tests.controlplane.test_runs_state import T0, make_run

READY = timedelta(seconds=30)
SECRET = "s3cr3t-Passw0rd-for-tests"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("busybox:1.36", "docker.io"),
        ("library/busybox", "docker.io"),
        ("team/app@sha256:" + "a" * 64, "docker.io"),
        ("docker.io/library/busybox", "docker.io"),
        ("index.docker.io/library/busybox", "docker.io"),
        ("quay.io/team/app:1", "quay.io"),
        ("localhost/muster-busybox:latest", "localhost"),
        ("localhost:5000/app", "localhost:5000"),
        ("127.0.0.1:5000/team/app:2", "127.0.0.1:5000"),
        ("Registry.Example:5000/app", "registry.example:5000"),
        ("[::1]:5000/app", "[::1]:5000"),
        ("myhost/app", "docker.io"),  # no '.', ':' or localhost: a Docker Hub namespace
    ],
)
def test_registry_of_reads_references_like_docker(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def test_registry_names_are_normalized_and_checked() -> None:
    assert check_registry("https://Quay.IO/") == "quay.io"
    assert check_registry("https://index.docker.io/v1/") == "docker.io"
    assert check_registry("localhost:5000") == "localhost:5000"
    for bad in ("", "  ", "quay.io/team", "bad host", "-x.example"):
        with pytest.raises(InvalidArgument) as err:
            check_registry(bad)
        assert err.value.field == "registry"


def test_a_login_needs_a_user_and_a_one_line_password() -> None:
    cred = check_credential("Quay.io", "bob", SECRET)
    assert cred == Credential("quay.io", "bob", SECRET)
    assert SECRET not in repr(cred)  # never in a log line by accident
    for args, field in [
        (("quay.io", "", "p"), "username"),
        (("quay.io", "a b", "p"), "username"),
        (("quay.io", "bob", ""), "password"),
        (("quay.io", "bob", "two\nlines"), "password"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            check_credential(*args)
        assert err.value.field == field
        assert "two" not in err.value.message  # the password is never echoed


def test_pull_policies() -> None:
    assert [pull_policy(t) for t in ("missing", "Always", " never ")] == [
        "missing",
        "always",
        "never",
    ]
    with pytest.raises(InvalidArgument, match="'sometimes' is not a pull policy"):
        pull_policy("sometimes")


def test_starts_carry_a_concrete_policy_and_only_the_images_registry_login() -> None:
    run = make_run(workers=1)
    run.worker.codespec = Codespec(  # type: ignore[union-attr]
        name="w", image="registry.example:5000/team/w:1", kind="worker", endpoints={"http": 80}
    )
    lifecycle.place(run, {("worker", 0): "n0", ("job", 0): "n1"}, T0, 5)
    logins = {
        "registry.example:5000": Credential("registry.example:5000", "bob", SECRET),
        "docker.io": Credential("docker.io", "hub", "other"),
    }
    spec = container_spec(run, "worker", 0, {}, "always", logins)
    assert spec.pull_policy == "always"  # the control plane's default: the run names none
    assert spec.registry_credentials == (logins["registry.example:5000"],)
    run.pull_policy = "missing"
    assert container_spec(run, "worker", 0, {}, "always", logins).pull_policy == "missing"
    # The job's image "img" is a short name: no registry host, so no login goes with it
    # (Podman may try several search registries for it; the agent would drop one).
    assert container_spec(run, "job", 0, {}, "missing", logins).registry_credentials == ()
    run.pull_policy = "never"  # nothing to pull: no credentials leave the control plane
    assert container_spec(run, "worker", 0, {}, "missing", logins).registry_credentials == ()
    assert credentials_for("quay.io/x", "always", logins) == ()


@pytest.mark.parametrize(
    ("image", "sent"),
    [
        ("busybox", None),
        ("team/app:1", None),
        ("library/busybox@sha256:" + "a" * 64, None),
        ("myhost/app", None),  # a Docker Hub namespace, not a host
        ("docker.io/library/busybox", "docker.io"),
        ("index.docker.io/team/app:1", "docker.io"),
        ("registry.example:5000/team/w:1", "registry.example:5000"),
        ("Registry.Example:5000/w", "registry.example:5000"),
        ("localhost:5000/w", None),  # no login stored for it
    ],
)
def test_only_references_that_name_their_registry_carry_its_login(
    image: str, sent: str | None
) -> None:
    logins = {
        "registry.example:5000": Credential("registry.example:5000", "bob", SECRET),
        "docker.io": Credential("docker.io", "hub", "other"),
    }
    expected = (logins[sent],) if sent else ()
    for policy in ("missing", "always"):
        assert credentials_for(image, policy, logins) == expected
    assert credentials_for(image, "never", logins) == ()


# -- the state machine with pulling ------------------------------------------------


def placed(workers: int = 2):
    run = make_run(workers)
    run.pull_policy = "always"
    assignment = {(r.role, r.index): f"n{r.index}" for r in run.replicas}
    lifecycle.place(run, assignment, T0, 9)
    return run


def obs(index: int, state: str, **kw) -> Observation:
    return Observation("worker", index, state, generation=9, **kw)  # type: ignore[arg-type]


def test_pulling_records_progress_then_the_digest() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "pulling", pull_bytes_done=45, pull_bytes_total=120), T0)
    w = run.replica("worker", 0)
    assert (w.state, w.pull_bytes_done, w.pull_bytes_total) == ("pulling", 45, 120)
    assert run.status == "Pending" and w.started_at is None
    lifecycle.observe(run, "n0", obs(0, "pulling", pull_bytes_done=100, pull_bytes_total=120), T0)
    digest = "sha256:" + "b" * 64
    lifecycle.observe(run, "n0", obs(0, "creating", image_digest=digest), T0 + timedelta(seconds=5))
    assert (w.pull_bytes_done, w.pull_bytes_total, w.image_digest) == (0, 0, digest)
    assert w.started_at == T0 + timedelta(seconds=5)
    lifecycle.observe(run, "n0", obs(0, "running", ready=True), T0 + timedelta(seconds=6))
    assert w.image_digest == digest  # kept when later reports omit it
    events = [e.message for e in run.events]
    assert events.count("worker 0 pulling image img on n0") == 1
    assert f"worker 0 pulled image img on n0 ({digest})" in events
    back = run_from_doc(run_to_doc(run)).replica("worker", 0)
    assert (back.image_digest, back.started_at) == (digest, w.started_at)


def test_pulling_progress_survives_the_store_and_old_documents_load() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "pulling", pull_bytes_done=7, pull_bytes_total=9), T0)
    back = run_from_doc(run_to_doc(run))
    assert back.pull_policy == "always"
    assert (back.replica("worker", 0).pull_bytes_done, back.replica("worker", 0).state) == (
        7,
        "pulling",
    )
    legacy = run_to_doc(run)
    del legacy["pullPolicy"]
    for r in legacy["replicas"]:
        for key in ("imageDigest", "pullBytesDone", "pullBytesTotal", "startedAt"):
            del r[key]
    old = run_from_doc(legacy)
    assert old.pull_policy is None  # unspecified: the control plane's default applies
    assert (old.replica("worker", 0).image_digest, old.replica("worker", 0).started_at) == (
        "",
        None,
    )


def test_a_failed_pull_fails_the_run_at_once_with_the_agents_message() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "pulling"), T0)
    message = (
        "pulling registry.example:5000/team/w:1 from registry.example:5000 on node n0 failed: "
        "unauthorized: authentication required"
    )
    actions = lifecycle.observe(run, "n1", obs(1, "failed", message=message), T0)
    assert run.status == "Failed"
    assert run.status_reason == f"worker 1 failed to start on n1: {message}"
    assert {a.node for a in actions} == {"n0", "n1"}  # torn down everywhere


def test_a_pulling_replica_gets_its_start_again_after_a_reconnect() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "pulling"), T0)
    assert lifecycle.pending_starts(run, "n0") == [StartReplica("n0", 7, "worker", 0)]


# -- the readiness clock -----------------------------------------------------------


def test_pull_time_does_not_count_against_the_readiness_timeout() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "running", ready=True), T0)
    lifecycle.observe(run, "n1", obs(1, "pulling"), T0)
    late = T0 + timedelta(minutes=10)  # a long pull: far past the readiness timeout
    assert lifecycle.readiness_clock(run, run.replica("worker", 1)) is None
    assert lifecycle.check_deadlines(run, late, READY) == [] and run.status == "Pending"
    lifecycle.observe(run, "n1", obs(1, "running"), late)  # the container starts now
    assert lifecycle.readiness_clock(run, run.replica("worker", 1)) == late
    assert lifecycle.check_deadlines(run, late + READY - timedelta(seconds=1), READY) == []
    assert lifecycle.check_deadlines(run, late + READY, READY)
    assert run.status == "Failed"
    assert (
        run.status_reason == "worker 1 was not ready within 30s of its start: container is running"
    )


def test_a_worker_never_reported_counts_from_placement() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "running", ready=True), T0)
    w = run.replica("worker", 1)
    assert w.state == "pending" and lifecycle.readiness_clock(run, w) == T0
    lifecycle.check_deadlines(run, T0 + READY, READY)
    assert run.status == "Failed"
    assert (
        run.status_reason == "worker 1 was not ready within 30s of placement: container is pending"
    )


def test_ready_workers_and_released_runs_have_no_clock() -> None:
    run = placed(workers=1)
    w = run.replica("worker", 0)
    lifecycle.observe(run, "n0", obs(0, "running", ready=True), T0)
    assert run.released and lifecycle.readiness_clock(run, w) is None
    assert lifecycle.readiness_clock(make_run(), make_run().replicas[0]) is None  # not placed


def test_a_worker_stored_before_the_clock_counts_from_placement() -> None:
    run = placed()
    lifecycle.observe(run, "n0", obs(0, "running"), T0 + timedelta(seconds=10))
    doc = run_to_doc(run)
    for r in doc["replicas"]:
        del r["startedAt"]
    old = run_from_doc(doc)
    assert lifecycle.readiness_clock(old, old.replica("worker", 0)) == T0


# -- sealed passwords ----------------------------------------------------------------


def test_sealing_round_trip_binds_the_row_and_makes_the_key_on_first_use(tmp_path: Path) -> None:
    key = tmp_path / "state" / "registry.key"
    sealer = Sealer(key)
    with pytest.raises(SealError, match="missing"):
        sealer.open(b"\x01" + b"x" * 40, b"ctx")
    assert not key.exists()  # opening never makes a key
    sealed = sealer.seal(SECRET.encode(), b"row-a")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert SECRET.encode() not in sealed
    assert Sealer(key).open(sealed, b"row-a") == SECRET.encode()  # a fresh process reads it
    with pytest.raises(SealError):
        Sealer(key).open(sealed, b"row-b")  # moved to another row
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        sealer.open(tampered, b"row-a")
    other = Sealer(tmp_path / "other.key")
    other.seal(b"x", b"")
    with pytest.raises(SealError):
        other.open(sealed, b"row-a")  # another key
    assert sealer.seal(b"same", b"c") != sealer.seal(b"same", b"c")  # fresh nonce each time


def database_bytes(directory: Path) -> bytes:
    """Every byte of the database and its WAL files."""
    return b"".join(p.read_bytes() for p in directory.glob("cp.db*"))


async def test_registry_logins_are_sealed_in_the_database(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = await SqliteStore.open(db)
    key = tmp_path / "state" / "registry.key"
    registries = RegistryService(store, Sealer(key))
    await registries.load()
    assert await registries.login("https://Registry.Example:5000/", "bob", SECRET) == (
        "registry.example:5000"
    )
    await registries.login("quay.io", "alice", "another-" + SECRET)
    assert registries.list() == [("quay.io", "alice"), ("registry.example:5000", "bob")]
    await store.close()
    raw = database_bytes(tmp_path)
    assert b"registry.example:5000" in raw  # the rows are there ...
    assert SECRET.encode() not in raw  # ... but no password in any database file

    store = await SqliteStore.open(db)  # a restart opens them again
    try:
        again = RegistryService(store, Sealer(key))
        await again.load()
        assert again.logins["registry.example:5000"].password == SECRET
        assert await again.logout("registry.example:5000") == "registry.example:5000"
        assert again.list() == [("quay.io", "alice")]
        with pytest.raises(NotFound):
            await again.logout("registry.example:5000")
    finally:
        await store.close()


async def test_logins_whose_key_is_lost_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SqliteStore.open(":memory:")
    try:
        await RegistryService(store, Sealer(tmp_path / "a.key")).login("quay.io", "bob", SECRET)
        lost = RegistryService(store, Sealer(tmp_path / "b.key"))
        with caplog.at_level(logging.WARNING):
            await lost.load()
        assert "quay.io" not in lost.logins
        assert lost.list() == [("quay.io", "bob")]  # still listed, so it can be replaced
        assert "registry_login_unreadable registry=quay.io" in caplog.text
        assert SECRET not in caplog.text
    finally:
        await store.close()


async def test_a_reload_drops_logins_another_leader_removed_or_resealed(tmp_path: Path) -> None:
    """High availability: leader A is deposed, leader B changes the logins, A is
    elected again and reloads (take_office). A must hold what the store holds
    now, not what it held before: no login B logged out, no old password."""
    store = MemoryStore()
    key = tmp_path / "registry.key"
    a, b = RegistryService(store, Sealer(key)), RegistryService(store, Sealer(key))
    await a.login("quay.io", "bob", SECRET)
    await a.login("registry.example:5000", "ci", "old-" + SECRET)
    await b.load()
    assert await b.logout("quay.io") == "quay.io"
    await b.login("registry.example:5000", "ci", "new-" + SECRET)
    await a.load()
    assert a.list() == [("registry.example:5000", "ci")]
    assert {r: c.password for r, c in a.logins.items()} == {
        "registry.example:5000": "new-" + SECRET
    }
    await b.logout("registry.example:5000")
    await a.load()
    assert (a.list(), dict(a.logins)) == ([], {})
    # A login re-sealed under a key A cannot open: A forgets the password it had.
    await a.login("quay.io", "bob", SECRET)
    other = RegistryService(store, Sealer(tmp_path / "other.key"))
    await other.login("quay.io", "bob", "other-" + SECRET)
    await a.load()
    assert "quay.io" not in a.logins and a.list() == [("quay.io", "bob")]


class SlowLoginReads(MemoryStore):
    """list_registry_logins answers what the store held when it was called, later."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()
        self.hold.set()
        self.reads = 0

    async def list_registry_logins(self):  # type: ignore[no-untyped-def]
        snapshot = await super().list_registry_logins()
        self.reads += 1
        await self.hold.wait()
        return snapshot


async def test_a_reload_keeps_a_login_or_logout_made_while_it_read(tmp_path: Path) -> None:
    store = SlowLoginReads()
    registries = RegistryService(store, Sealer(tmp_path / "registry.key"))
    await registries.login("quay.io", "bob", SECRET)
    store.hold.clear()
    reload = asyncio.create_task(registries.load())  # reads the store as it is now...
    await asyncio.sleep(0)
    assert store.reads == 1
    await registries.logout("quay.io")  # ...then these happen before the read lands
    await registries.login("ghcr.io", "alice", SECRET)
    store.hold.set()
    await reload
    assert registries.list() == [("ghcr.io", "alice")]
    assert set(registries.logins) == {"ghcr.io"}
    assert store.reads == 2  # read again, since memory changed meanwhile


def test_the_key_lives_in_the_state_dir_or_beside_the_database(tmp_path: Path) -> None:
    from controlplane.security.tls import SecurityConfig
    from controlplane.server import registry_key_path

    secure = SecurityConfig(state_dir=tmp_path / "state", agent_listen="127.0.0.1:0")
    assert (
        registry_key_path(tmp_path / "db" / "cp.db", secure) == tmp_path / "state" / "registry.key"
    )
    assert registry_key_path(tmp_path / "db" / "cp.db", None) == tmp_path / "db" / "registry.key"
    assert registry_key_path(":memory:", None) is None
    in_memory = Sealer(None)
    assert in_memory.open(in_memory.seal(b"x", b"c"), b"c") == b"x"


async def test_logins_are_refused_where_the_key_could_not_outlive_the_process(
    tmp_path: Path,
) -> None:
    """--insecure with PostgreSQL: no state directory, no file beside the database,
    so the key would live in memory while the sealed logins outlive it."""
    from controlplane.assembly import registry_key_missing
    from controlplane.security.tls import SecurityConfig

    postgres = "postgresql://muster@127.0.0.1:5432/muster"
    secure = SecurityConfig(state_dir=tmp_path / "state", agent_listen="127.0.0.1:0")
    reason = registry_key_missing(postgres, None)
    assert reason is not None and "--insecure" in reason and "PostgreSQL" in reason
    assert registry_key_missing(postgres, secure) is None  # the key lives in --state-dir
    assert registry_key_missing(tmp_path / "cp.db", None) is None  # beside the SQLite file
    assert registry_key_missing("memory:", None) is None  # the logins go with the store
    store = MemoryStore()
    refusing = RegistryService(store, Sealer(None), refuse_logins=reason)
    with pytest.raises(FailedPrecondition) as err:
        await refusing.login("quay.io", "bob", SECRET)
    assert str(err.value) == reason and SECRET not in str(err.value)
    assert await store.list_registry_logins() == [] and refusing.list() == []
