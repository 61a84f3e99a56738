"""hpo.storage's SQLite engine: WAL + synchronous=NORMAL for the driver, overridable in the URL."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from hpo.errors import ConfigError
from hpo.storage import open_storage, split_sqlite_pragmas

optuna.logging.set_verbosity(optuna.logging.WARNING)


def pragmas(storage: optuna.storages.BaseStorage) -> tuple[str, int]:
    assert isinstance(storage, optuna.storages.RDBStorage)
    with storage.engine.connect() as conn:
        mode = conn.execute(text("PRAGMA journal_mode")).scalar()
        sync = conn.execute(text("PRAGMA synchronous")).scalar()
    return str(mode), int(sync or 0)


def test_the_driver_puts_the_file_in_wal_and_every_connection_follows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'hpo.db'}"
    driver = open_storage(url, wal=True)
    assert pragmas(driver) == ("wal", 1)  # 1 = NORMAL
    assert isinstance(driver, optuna.storages.RDBStorage)
    assert not driver.engine.pool._pre_ping  # a file has no connection to lose
    # a job or a reader opens the same URL: the file is in WAL mode, so NORMAL as well
    assert pragmas(open_storage(url)) == ("wal", 1)
    study = optuna.create_study(storage=driver, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 3


def test_readers_leave_the_journal_mode_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert pragmas(open_storage(url)) == ("delete", 2)  # SQLite's own: rollback journal, FULL


def test_the_url_overrides_both(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}?journal_mode=delete&synchronous=full"
    assert pragmas(open_storage(url, wal=True)) == ("delete", 2)
    url = f"sqlite:///{tmp_path / 'hpo2.db'}?synchronous=off"
    assert pragmas(open_storage(url, wal=True)) == ("wal", 0)


def test_pragma_keys_are_ours_the_rest_of_the_query_is_sqlalchemys() -> None:
    assert split_sqlite_pragmas("sqlite:////x.db?journal_mode=WAL&timeout=9") == (
        "sqlite:////x.db?timeout=9", {"journal_mode": "wal"})
    assert split_sqlite_pragmas("sqlite:////x.db") == ("sqlite:////x.db", {})
    with pytest.raises(ConfigError, match="synchronous='fast' is not one of normal, full"):
        open_storage("sqlite:////tmp/never.db?synchronous=fast")


def test_an_in_memory_sqlite_database_keeps_its_one_connection() -> None:
    study = optuna.create_study(storage=open_storage("sqlite:///:memory:", wal=True))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2
