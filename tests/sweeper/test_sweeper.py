"""End-to-end sweeps of a plain Hydra app through the hpo sweeper, with real SQLite storage."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import APPS, clean_env, run_cli, run_cli_batch
from hpo import attrs

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEARCH = ["x=interval(-5, 5)", "y=range(0, 3)", "kind=a,b"]


def load(db: Path, name: str = "quadratic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def sweep(app: str, tmp: Path, *extra: str, check: bool = True, **kw: object):
    return run_cli(
        [app, "-m", *SEARCH, f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}", *extra],
        cwd=tmp, env=clean_env(HPO_TEST_SWEEP_DIR=str(tmp / "multirun")), check=check, **kw,
    )


def test_plugin_is_discovered(quadratic_app: str, tmp_path: Path) -> None:
    out = run_cli([quadratic_app, "--info", "plugins"], cwd=tmp_path).stdout
    assert "HPOSweeper" in out


def test_sqlite_sweep_budget_rerun_and_extend(quadratic_app: str, tmp_path: Path) -> None:
    sweep(quadratic_app, tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2")
    study = load(tmp_path / "s.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    t = trials[0]
    assert t.distributions == {
        "x": FloatDistribution(-5.0, 5.0),
        "y": IntDistribution(0, 3),
        "kind": CategoricalDistribution(["a", "b"]),
    }
    for t in trials:  # the value told is the app's return value for those params
        expected = (t.params["x"] - 2) ** 2 + (t.params["kind"] != "a") + t.params["y"]
        assert t.value == pytest.approx(expected)
    # a plain app has no `agent` node: the classical sampler (TPE) is used, no LLM provenance
    assert all(attrs.SOURCE not in t.user_attrs for t in trials)
    # one write per launch; the output dir is derived, and it is the job's
    for t in trials:
        assert attrs.launch_driver(t.user_attrs) and attrs.OUTPUT_DIR not in t.user_attrs
        out = Path(str(attrs.trial_output_dir(t.number, t.user_attrs, study.user_attrs)))
        assert out == tmp_path / "multirun" / "quadratic" / str(t.number)
        assert (out / ".hydra" / "overrides.yaml").is_file()
    # the jobs ran on this host: the driver put the file in WAL mode
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # the same command again: the budget is already met
    out = sweep(quadratic_app, tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2")
    assert "nothing to run" in out.stderr + out.stdout
    assert len(load(tmp_path / "s.db").trials) == 6
    # raising n_trials extends the study
    sweep(quadratic_app, tmp_path, "hydra.sweeper.n_trials=8")
    numbers = [t.number for t in load(tmp_path / "s.db").trials]
    assert numbers == list(range(8))


def test_submitit_local_launcher(quadratic_app: str, tmp_path: Path) -> None:
    sweep(
        quadratic_app, tmp_path, "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2", f"record_env={tmp_path / 'env.txt'}",
    )
    trials = load(tmp_path / "s.db").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # each job ran in its own process and saw its own trial number
    lines = (tmp_path / "env.txt").read_text().split()
    numbers, pids = sorted(int(n) for n in lines[::2]), set(lines[1::2])
    assert numbers == [0, 1, 2, 3]
    assert str(os.getpid()) not in pids and len(pids) == 4


def test_failed_and_nan_trials_are_fail_and_rate_stops(quadratic_app: str, tmp_path: Path) -> None:
    proc = sweep(
        quadratic_app, tmp_path, "fail_when_x_above=0", "hydra.sweeper.n_trials=12",
        "hydra.sweeper.max_failure_rate=0.9", "hydra.sweeper.seed=3", "nan=false,true",
        check=False,
    )
    study = load(tmp_path / "s.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, proc.stderr
    for t in failed:
        err = t.user_attrs["hpo:error"]
        if t.params["x"] > 0:
            assert "RuntimeError: x=" in err and "too large" in err
        else:
            assert t.params["nan"] is True and "not finite" in err
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.params["x"] <= 0 and t.params["nan"] is False

    # with a strict rate the sweep stops early, non-zero, with one clear line
    proc = sweep(
        quadratic_app, tmp_path, "fail_when_x_above=-10", "hydra.sweeper.n_trials=10",
        "hydra.sweeper.study_name=strict", "hydra.sweeper.max_failure_rate=0.2", check=False,
    )
    assert proc.returncode != 0
    assert "max_failure_rate=0.2" in proc.stderr
    assert len(load(tmp_path / "s.db", "strict").trials) == 3


def test_resume_after_driver_sigkill(quadratic_app: str, tmp_path: Path) -> None:
    args = [
        quadratic_app, "-m", *SEARCH, "sleep=0.7", "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}", "hydra.sweeper.seed=1",
    ]
    env = clean_env(HPO_TEST_SWEEP_DIR=str(tmp_path / "multirun"))
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.2)
            if (tmp_path / "s.db").exists():
                try:
                    done = load(tmp_path / "s.db").get_trials(states=(TrialState.COMPLETE,))
                except Exception:
                    continue
                if len(done) >= 2:
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    before = load(tmp_path / "s.db").trials
    assert any(t.state == TrialState.RUNNING for t in before)  # killed mid-trial

    run_cli(args, cwd=tmp_path, env=env)
    trials = load(tmp_path / "s.db").trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    orphans = [t for t in trials if t.user_attrs.get("hpo:retried")]
    assert orphans and all("orphaned" in t.user_attrs["hpo:error"] for t in orphans)
    retries = [t for t in trials if "hpo:retry_of" in t.user_attrs]
    assert {t.user_attrs["hpo:retry_of"] for t in retries} == {t.number for t in orphans}
    for r in retries:  # a retry runs the same parameters (killed before it had any: new ones)
        orphan = trials[r.user_attrs["hpo:retry_of"]]
        assert r.params == orphan.params or not orphan.params
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("hpo:retried")]
    assert len(counted) == 6


BAD_INPUT = [
    ("hydra.sweeper.n_trials=0", "n_trials=0 must be an integer >= 1"),
    ("hydra.sweeper.n_jobs=0", "n_jobs=0 must be an integer >= 1"),
    ("hydra.sweeper.direction=maximise", "'maximise' is not minimize or maximize"),
    ("x=interval(5, -5)", "low > high"),
    ("zz=interval(0, 1)", "unknown parameter path 'zz'"),
    ("hydra.sweeper.pruner=medain", "pruner='medain' is unknown"),
    ("hydra.sweeper.storage=notaurl", "is not a URL"),
    ("hydra.sweeper.storage=postgresql://u@127.0.0.1:1/db", "cannot open storage"),
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Each bad override as its own command line of the quadratic app, all in one process
    (tests/apps/cli_batch.py): each fails before any trial."""
    app = str(APPS / "quadratic" / "app.py")
    dirs = {o: tmp_path_factory.mktemp("bad") for o, _ in BAD_INPUT}
    done = run_cli_batch({o: ([app, "-m", *SEARCH, f"hydra.sweeper.storage=sqlite:///{d / 's.db'}",
                               o], d, None) for o, d in dirs.items()}, timeout=300)
    return {o: (dirs[o], p) for o, p in done.items()}


@pytest.mark.parametrize(("override", "needle"), BAD_INPUT)
def test_bad_input_is_one_line_nonzero_and_stores_nothing(
    bad_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]], override: str,
    needle: str
) -> None:
    tmp_path, proc = bad_runs[override]
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s.db").exists()


def test_fast_in_process_jobs_get_the_config_hydra_would_compose(
    quadratic_app: str, tmp_path: Path
) -> None:
    """The cached-composition path writes the same job config as Hydra's full composition."""
    def run(mode: str) -> Path:
        out = tmp_path / mode
        run_cli(
            [quadratic_app, "-m", *SEARCH, "hydra.sweeper.storage=memory",
             "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=1", f"hydra.sweep.dir={out}",
             f"hydra.sweeper.fast_inprocess={mode == 'fast'}"],
            cwd=tmp_path,
        )
        return out

    fast, full = run("fast"), run("full")

    def text(root: Path, name: str) -> str:
        raw = (root / "2" / ".hydra" / name).read_text().replace(str(root), "DIR")
        return "\n".join(
            ln for ln in raw.splitlines() if "fast_inprocess" not in ln
        )

    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert text(fast, name) == text(full, name), name


LOGGING_APP = '''
import logging

import hydra

log = logging.getLogger("trialapp")


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    log.info("job says x=%s", cfg.x)
    logging.getLogger("trialapp.debug").debug("hidden unless verbose")
    return float(cfg.x) ** 2


if __name__ == "__main__":
    main()
'''
LOGGING_CONFIG = '''
defaults:
  - override hydra/sweeper: hpo
  - _self_
x: 0.0
hydra:
  sweeper: {study_name: logs, n_trials: 4, storage: memory, seed: 2, progress: false}
  sweep: {dir: "${oc.env:HPO_TEST_SWEEP_DIR}", subdir: "${hydra.job.num}"}
'''


def test_fast_in_process_jobs_log_as_hydra_jobs_do(tmp_path: Path) -> None:
    """Each trial's log file holds its job's lines only; the driver logs in Hydra's format."""
    (tmp_path / "app.py").write_text(LOGGING_APP)
    (tmp_path / "config.yaml").write_text(LOGGING_CONFIG)

    def run(mode: str) -> tuple[Path, str]:
        out = tmp_path / mode
        proc = run_cli(
            [str(tmp_path / "app.py"), "-m", "x=interval(-1, 1)",
             f"hydra.sweeper.fast_inprocess={mode == 'fast'}"],
            cwd=tmp_path, env=clean_env(HPO_TEST_SWEEP_DIR=str(out)),
        )
        return out, proc.stdout

    def strip_times(text: str) -> list[str]:
        return [ln.split("]", 1)[1] for ln in text.splitlines() if ln.startswith("[")]

    (fast, fast_out), (full, full_out) = run("fast"), run("full")
    for n in range(4):
        fast_log = (fast / str(n) / "app.log").read_text()
        assert strip_times(fast_log) == strip_times((full / str(n) / "app.log").read_text())
        lines = strip_times(fast_log)
        assert len(lines) == 1 and lines[0].startswith("[trialapp][INFO] - job says x=")
    # the driver's lines between jobs are Hydra's ([HYDRA] ...), on the console only
    for out in (fast_out, full_out):
        finished = [ln for ln in out.splitlines() if "trial 3 finished in" in ln]
        assert len(finished) == 1 and "][HYDRA] trial 3 finished in" in finished[0]
        assert out.count("job says x=") == 4
