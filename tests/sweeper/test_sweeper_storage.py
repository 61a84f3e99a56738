"""The storage lost mid-sweep (issue 15.3), with real SQLite files: the real cause in one
line, transient locks retried, a result that cannot be told kept beside its trial and told on
the next run."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from conftest import APPS, clean_env
from hpo import attrs
from hydra_plugins.hpo_sweeper._lost_storage import (
    UNREPORTED,
    lost_storage,
    save_unreported,
    tell_unreported,
    with_retries,
)

QUADRATIC = str(APPS / "quadratic" / "app.py")


def test_a_storage_folder_deleted_mid_sweep_is_one_line_and_the_result_is_kept(
    tmp_path: Path,
) -> None:
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    url = f"sqlite:///{dbdir / 's.db'}"
    proc = subprocess.Popen(
        [sys.executable, QUADRATIC, "-m", f"hydra.sweeper.storage={url}", "x=interval(-5, 5)",
         "sleep=3", "hydra.sweeper.n_trials=3", "hydra.sweeper.progress=false"],
        cwd=tmp_path, env=clean_env(HPO_TEST_SWEEP_DIR=str(tmp_path / "multirun")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the first trial's job started
            try:
                trials = optuna.load_study(study_name="quadratic", storage=url).trials
            except Exception:
                trials = []
            if trials and attrs.LAUNCH in trials[0].user_attrs:
                break
            time.sleep(0.2)
        shutil.rmtree(dbdir)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode not in (0, None)
    assert "Traceback" not in out + err, (out + err)[-3000:]
    last = [ln for ln in err.splitlines()
            if ln.strip() and not ln.startswith("Set the environment")][-1]
    assert last.startswith(f"storage folder is gone: {dbdir}: "), err[-2000:]
    kept = tmp_path / "multirun" / "quadratic" / "0" / UNREPORTED
    assert kept.is_file(), out[-2000:]
    assert '"state": "COMPLETE"' in kept.read_text()


def test_a_read_only_database_is_named_as_such(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            ro.execute("INSERT INTO studies (study_name) VALUES ('x')")
    finally:
        ro.close()
    lost = lost_storage(f"sqlite:///{db}", info.value)
    assert lost is not None and str(lost).startswith(f"storage is read-only: {db}: ")
    assert lost_storage(f"sqlite:///{db}", RuntimeError("something else")) is None
    assert lost_storage(f"sqlite:///{tmp_path / 'gone.db'}") is not None
    assert lost_storage("postgresql://u@h/db", info.value) is None


def test_a_locked_database_is_retried_with_backoff(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.commit()
    setup.close()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.5, lambda: holder.execute("COMMIT")).start()
    attempts: list[float] = []

    def write() -> None:
        attempts.append(time.monotonic())
        con = sqlite3.connect(db, timeout=0)
        try:
            con.execute("INSERT INTO t VALUES (1)")
            con.commit()
        finally:
            con.close()

    with_retries(write)
    assert len(attempts) >= 2  # the first one met the lock
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone() == (1,)
    with pytest.raises(ZeroDivisionError):  # anything else is not retried
        with_retries(lambda: 1 / 0)


def test_a_kept_result_is_told_when_the_storage_is_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    t = study.ask({"x": FloatDistribution(0, 1)})
    out = tmp_path / "runs" / "0"
    t.set_user_attr(attrs.OUTPUT_DIR, str(out))
    save_unreported(out, {"study": "s", "number": 0, "trial_id": t._trial_id,
                          "state": "COMPLETE", "values": [0.25], "user_attrs": {"folds": [1]}})
    other = study.ask({"x": FloatDistribution(0, 1)})  # no file: left to the orphan check
    told = tell_unreported(study, lambda n, user: attrs.trial_output_dir(n, user, {}))
    assert told == [0]
    first, second = optuna.load_study(study_name="s", storage=url).trials
    assert first.state == TrialState.COMPLETE and first.value == 0.25
    assert first.user_attrs["folds"] == [1]
    assert second.state == TrialState.RUNNING and second.number == other.number
    assert not (out / UNREPORTED).exists() and (out / "hpo_unreported.told").exists()
