"""Cluster-grade sweeps with real processes (issue 14): a restarted driver re-attaches to the
jobs of a killed one (SLURM and submitit_local), stop signals on a real driver, resources per
trial, the ``${hydra.job.num}`` subdir on the fast path, config errors as FAILs.

Each sweep runs the quadratic test app in its own ``tmp_path`` with SQLite storage; SLURM
sweeps use a job name of their own so that squeue/sacct tell their jobs from others'.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import APPS, run_cli
from hpo import attrs
from test_slurm import (
    CLI_TIMEOUT_S,
    job_name,
    jobs_named,
    launcher_args,
    load,
    quad_args,
    quad_env,
    sacct_until_final,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

QUADRATIC = str(APPS / "quadratic" / "app.py")


def start_driver(tmp: Path, args: list[str]) -> subprocess.Popen[str]:
    log = (tmp / "driver.log").open("a")
    return subprocess.Popen([sys.executable, QUADRATIC, *args], cwd=tmp, env=quad_env(tmp),
                            stdout=log, stderr=subprocess.PIPE, text=True)


def wait_for(what: str, check, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def squeue(name: str, state: str = "PENDING,RUNNING,COMPLETING,CONFIGURING") -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", state, "-o", "%i"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def launched_ids(study: optuna.Study) -> list[str]:
    out = []
    for t in study.trials:
        job = attrs.launch_job(t.user_attrs)
        assert job is not None, (t.number, t.user_attrs)
        out += job.ids
    return out


def running_with_jobs(tmp: Path, n: int) -> bool:
    # the trials RUNNING in storage with their job ids recorded (the driver wrote them)
    db = tmp / "s.db"
    if not db.exists():
        return False
    try:
        trials = load(tmp).get_trials(states=(TrialState.RUNNING,))
    except Exception:  # the study is not created yet
        return False
    return sum(attrs.launch_job(t.user_attrs) is not None for t in trials) >= n


# ------------------------------------------------------------------------------ 1. re-attach
@pytest.mark.slurm
def test_a_restarted_driver_tells_the_results_of_jobs_that_ended_without_it(
    slurm_cluster, tmp_path: Path
) -> None:
    name = job_name()
    args = quad_args(tmp_path, "x=interval(-5, 5)", "sleep=5", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.n_jobs=2",
                     *launcher_args(tmp_path, name, slurm_cluster.partition))
    driver = start_driver(tmp_path, args)
    try:
        wait_for("2 SLURM jobs running", lambda: len(squeue(name, "RUNNING")) == 2
                 and running_with_jobs(tmp_path, 2))
        driver.send_signal(signal.SIGKILL)  # no handler, no cleanup: the login session died
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    first = set(jobs_named(name))
    assert len(first) == 2
    wait_for("the orphaned jobs to end", lambda: not squeue(name), timeout=60)
    # the same command again
    out = run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path),
                  timeout=CLI_TIMEOUT_S)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3, out.stderr[-3000:]
    ids = launched_ids(study)
    # one SLURM job per trial: the two that ran without a driver were told, not run again
    assert len(ids) == 3 and set(ids) > first
    assert jobs_named(name) == set(ids)
    assert sacct_until_final(ids) == dict.fromkeys(ids, "COMPLETED")
    for t in study.trials:  # each value is its job's own result
        assert t.value == pytest.approx((t.params["x"] - 2) ** 2)
    assert "2 re-attached" in out.stdout + out.stderr


@pytest.mark.slurm
def test_a_restarted_driver_waits_for_jobs_still_running_in_a_slot(
    slurm_cluster, tmp_path: Path
) -> None:
    name = job_name()
    args = quad_args(tmp_path, "x=interval(-5, 5)", "sleep=8", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.n_jobs=2",
                     *launcher_args(tmp_path, name, slurm_cluster.partition))
    driver = start_driver(tmp_path, args)
    try:
        wait_for("2 SLURM jobs running", lambda: len(squeue(name, "RUNNING")) == 2
                 and running_with_jobs(tmp_path, 2))
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert len(squeue(name, "RUNNING")) == 2  # rerun at once: they still run
    run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    ids = launched_ids(study)
    assert len(ids) == 3 and jobs_named(name) == set(ids)
    assert sacct_until_final(ids) == dict.fromkeys(ids, "COMPLETED")


def local_args(tmp: Path, *extra: str) -> list[str]:
    return quad_args(tmp, "hydra/launcher=submitit_local",
                     f"hydra.launcher.submitit_folder={tmp / 'submitit'}/%j",
                     "hydra.launcher.timeout_min=5", *extra)


def test_a_restarted_driver_re_attaches_to_submitit_local_jobs(tmp_path: Path) -> None:
    args = local_args(tmp_path, "x=interval(-5, 5)", "sleep=6", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.n_jobs=2", f"record_env={tmp_path / 'runs.txt'}")
    driver = start_driver(tmp_path, args)
    try:
        wait_for("2 local jobs submitted", lambda: running_with_jobs(tmp_path, 2))
        os.kill(driver.pid, signal.SIGKILL)  # its job processes run on
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    # every trial ran exactly once: nothing retrained
    runs = (tmp_path / "runs.txt").read_text().split()[::2]
    assert sorted(runs) == ["0", "1", "2"]
    assert len(set(launched_ids(study))) == 3
