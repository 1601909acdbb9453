"""muster-controlplane backup: a live SQLite store copied with the online
backup API keeps everything, its cluster id included; PostgreSQL gets pg_dump
guidance and exit 2."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.__main__ import main
from controlplane.core.codespec import Codespec
from controlplane.store.sqlite import SqliteStore


async def test_a_backup_of_a_running_store_keeps_its_cluster_id(tmp_path: Path, capsys) -> None:
    live = await SqliteStore.open(tmp_path / "cp.db")  # holds the lock, as a control plane does
    try:
        spec = Codespec(name="keep", image="img", version=1, created_at=datetime.now(UTC))
        await live.insert_codespec(spec)
        cluster = await live.cluster_id()
        main(["backup", "--db", str(tmp_path / "cp.db"), str(tmp_path / "copy.db")])
        assert "backed up" in capsys.readouterr().out
        with pytest.raises(SystemExit):  # never over an existing file
            main(["backup", "--db", str(tmp_path / "cp.db"), str(tmp_path / "copy.db")])
    finally:
        await live.close()
    restored = await SqliteStore.open(tmp_path / "copy.db")
    try:
        assert await restored.cluster_id() == cluster
        assert (await restored.latest_codespec("keep")).image == "img"
    finally:
        await restored.close()


def test_postgresql_backups_are_pg_dump(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["backup", "--db", "postgresql://muster:secret@db:5432/muster", "out.dump"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "pg_dump -Fc" in err and "secret" not in err
