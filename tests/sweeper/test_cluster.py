"""Cluster-grade sweeps with real processes (issue 14): a restarted driver re-attaches to the
jobs of a killed one (SLURM and submitit_local), stop signals on a real driver, resources per
trial, the ``${hydra.job.num}`` subdir on the fast path, config errors as FAILs.

Each sweep runs the quadratic test app in its own ``tmp_path`` with SQLite storage; SLURM
sweeps use a job name of their own so that squeue/sacct tell their jobs from others'.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_slurm import (
    CLI_TIMEOUT_S,
    job_name,
    jobs_named,
    last_error_line,
    launcher_args,
    load,
    quad_args,
    quad_env,
    sacct_until_final,
)

from conftest import APPS, run_cli
from hpo import attrs

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


# ------------------------------------------------------------------------------ 4. signals
def interrupt(tmp: Path, args: list[str], sig: signal.Signals, n_running: int
              ) -> tuple[int, str]:
    """Start a driver, send ``sig`` once ``n_running`` trials run; its status and stderr."""
    driver = start_driver(tmp, args)
    try:
        wait_for(f"{n_running} trial(s) running", lambda: running_with_jobs(tmp, n_running)
                 if "submitit" in " ".join(args) else running_trials(tmp) >= n_running)
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = (tmp / "driver.log").read_text()
    assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    return driver.returncode, err


def running_trials(tmp: Path) -> int:
    """RUNNING trials whose job was started (``hpo:launch`` written): asked is not enough."""
    try:
        trials = load(tmp).get_trials(states=(TrialState.RUNNING,))
    except Exception:  # no study yet
        return 0
    return sum(attrs.LAUNCH in t.user_attrs for t in trials)


def last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_an_in_process_driver_with_one_line_and_no_retry_used(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    args = quad_args(tmp_path, "x=interval(-5, 5)", "sleep=30", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.max_retries=0")
    rc, err = interrupt(tmp_path, args, sig, 1)
    assert rc == code
    assert last_line(err) == ("interrupted: 0 finished, 1 in flight; rerun the same command "
                              "to resume")
    first, queued = load(tmp_path).trials
    assert first.state == TrialState.FAIL
    assert first.user_attrs[attrs.ERROR] == f"interrupted ({sig.name})"
    # queued again although max_retries=0: an interruption uses no retry
    assert queued.state == TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == first.params
    assert queued.user_attrs[attrs.RETRY_COUNT] == 0
    # the same command resumes: the queued params run first, the budget is reached
    run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)", "hydra.sweeper.n_trials=2",
                                   "hydra.sweeper.max_retries=0")],
            cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE,
                                        TrialState.COMPLETE]
    assert trials[1].params == first.params


def test_sigterm_keeps_submitit_local_jobs_running_for_the_rerun(tmp_path: Path) -> None:
    args = local_args(tmp_path, "x=interval(-5, 5)", "sleep=6", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.n_jobs=2", f"record_env={tmp_path / 'runs.txt'}")
    rc, err = interrupt(tmp_path, args, signal.SIGTERM, 2)
    assert rc == 143
    assert last_line(err) == ("interrupted: 0 finished, 2 in flight; rerun the same command "
                              "to resume")
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2  # kept, not failed
    run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    runs = (tmp_path / "runs.txt").read_text().split()[::2]
    assert sorted(runs) == ["0", "1", "2"]  # the kept jobs were not run again


def test_on_interrupt_cancel_stops_the_jobs_and_queues_their_params(tmp_path: Path) -> None:
    args = local_args(tmp_path, "x=interval(-5, 5)", "sleep=20", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.n_jobs=2", "hydra.sweeper.on_interrupt=cancel",
                      "hydra.sweeper.max_retries=0")
    rc, err = interrupt(tmp_path, args, signal.SIGINT, 2)
    assert rc == 130
    assert last_line(err) == ("interrupted: 0 finished, 2 in flight; rerun the same command "
                              "to resume")
    study = load(tmp_path)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(failed) == 2 and len(queued) == 2
    assert all("its job was cancelled" in t.user_attrs[attrs.ERROR] for t in failed)
    assert all(t.user_attrs[attrs.RETRY_COUNT] == 0 for t in queued)
    # the jobs' processes are gone
    pids = [i for t in failed for i in attrs.launch_job(t.user_attrs).ids]  # type: ignore[union-attr]
    wait_for("the cancelled jobs to end", lambda: not any(
        Path(f"/proc/{p}").exists() for p in pids), timeout=30)


# ------------------------------------------------------------------------------ 5. subdir
def test_a_subdir_with_the_job_number_works_on_the_fast_in_process_path(tmp_path: Path) -> None:
    run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)", "hydra.sweeper.n_trials=2",
                                   "hydra.sweep.subdir=t_${hydra.job.num}")],
            cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    sweep = tmp_path / "multirun" / "quadratic"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["t_0", "t_1"]
    assert (sweep / "t_1" / ".hydra" / "overrides.yaml").exists()


@pytest.mark.parametrize("launcher", ["in-process", "submitit_local"])
def test_a_config_error_in_a_trial_is_a_fail_with_its_message_never_retried(
    tmp_path: Path, launcher: str
) -> None:
    extra = ["x=interval(-5, 5)", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_retries=2",
             "hydra.sweeper.max_failure_rate=1.0", "hydra.sweep.subdir=t_${hydra.job.nosuch}"]
    args = local_args(tmp_path, *extra) if launcher != "in-process" else quad_args(
        tmp_path, *extra)
    out = run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path),
                  timeout=CLI_TIMEOUT_S)
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # no third: nothing retried
    for t in trials:
        error = t.user_attrs[attrs.ERROR]
        assert "hydra.job.nosuch" in error and "lost" not in error, error
        assert attrs.RETRIED not in t.user_attrs
    assert "retrying" not in out.stdout + out.stderr


# ------------------------------------------------------------------------------ 3. resources
RESOURCES = r"hydra.sweeper.resources={kind\=a: {mem_gb: 2}, kind\=b: {cpus_per_task: 2}}"


def test_the_dry_run_prints_the_sbatch_script_of_each_resource_class(tmp_path: Path) -> None:
    launcher = launcher_args(tmp_path, "hpotest-dry", "debug")
    out = run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)", "kind=choice(a, b)",
                                         "hydra.sweeper.n_trials=4", RESOURCES,
                                         "hydra.sweeper.dry_run=true", *launcher)],
                  cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S).stdout
    heads = [ln for ln in out.splitlines() if ln.startswith("sbatch script of")]
    assert [h.split(",")[0] for h in heads] == [
        "sbatch script of resource class 'kind=a' (mem_gb=2)",
        "sbatch script of resource class 'kind=b' (cpus_per_task=2)",
        "sbatch script of the trials no resource class matches (hydra.launcher)"]
    scripts = out.split("sbatch script of")[1:]
    assert "#SBATCH --mem=2GB" in scripts[0] and "--cpus-per-task" not in scripts[0]
    assert "#SBATCH --mem=1GB" in scripts[1] and "#SBATCH --cpus-per-task=2" in scripts[1]
    assert "#SBATCH --mem=1GB" in scripts[2] and "--cpus-per-task" not in scripts[2]
    assert "nothing was submitted" in out


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (r"{kind\=c: {mem_gb: 2}}", "hydra.sweeper.resources['kind=c']: kind=c is not a value "
                                    "of kind: choose from a, b"),
        (r"{kind\=a: {gpus: 1}}", "hydra.sweeper.resources['kind=a'].gpus is not a setting of "
                                  "hydra.launcher"),
        (r"{model\=a: {mem_gb: 2}}", "hydra.sweeper.resources['model=a']: write the class as "
                                     "'<searched param>=value[,value]'"),
    ],
)
def test_a_bad_resource_class_is_one_line_naming_it(tmp_path: Path, resources: str,
                                                    expected: str) -> None:
    proc = run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)", "kind=choice(a, b)",
                                          f"hydra.sweeper.resources={resources}",
                                          *local_args(tmp_path)[2:])],
                   cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert expected in last_error_line(proc.stderr), proc.stderr[-2000:]


def scontrol_fields(job_id: str) -> dict[str, str]:
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                          text=True, timeout=30, check=True)
    return dict(f.split("=", 1) for f in done.stdout.split() if "=" in f)


@pytest.mark.slurm
def test_each_trials_job_gets_the_resources_of_its_class(slurm_cluster, tmp_path: Path) -> None:
    name = job_name()
    run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)", "kind=choice(a, b)",
                                   "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                                   "hydra.sweeper.seed=0",  # draws kind a, b, b, a
                                   RESOURCES, *launcher_args(tmp_path, name,
                                                             slurm_cluster.partition))],
            cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    kinds = {t.params["kind"] for t in study.trials}
    assert kinds == {"a", "b"}, "TPE drew one kind only: change the seed"
    job = {attrs.launch_job(t.user_attrs).ids[0]: t for t in study.trials}  # type: ignore[union-attr]
    # the controller's record of each job (sacct's ReqMem now and then reads "16?" here)
    fields = {j: scontrol_fields(j) for j in job}
    cpus = {j: f["NumCPUs"] for j, f in fields.items()}
    mem = {j: f["MinMemoryNode"] for j, f in fields.items()}
    for job_id, t in job.items():
        rec = t.user_attrs[attrs.LAUNCH]
        if t.params["kind"] == "a":
            assert (cpus[job_id], mem[job_id], rec["resources"]) == ("1", "2G", "kind=a")
        else:
            assert (cpus[job_id], mem[job_id], rec["resources"]) == ("2", "1G", "kind=b")


@pytest.mark.slurm
def test_a_rejected_resource_class_is_named(slurm_cluster, tmp_path: Path) -> None:
    proc = run_cli([QUADRATIC, *quad_args(
        tmp_path, "x=interval(-5, 5)", "kind=choice(b)", "hydra.sweeper.n_trials=2",
        r"hydra.sweeper.resources={kind\=b: {mem_gb: 500}}",
        *launcher_args(tmp_path, job_name(), slurm_cluster.partition))],
        cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = last_error_line(proc.stderr)
    assert line.startswith("SLURM rejected the job of resource class 'kind=b': "), line
    assert "hydra.sweeper.resources['kind=b'].mem_gb" in line


# ------------------------------------------------------------------------------ 2. detach
def status_text(tmp: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "hpo.status", "--storage",
                           f"sqlite:///{tmp / 's.db'}", "--study", "quadratic"],
                          capture_output=True, text=True, timeout=60, env=quad_env(tmp),
                          check=True)
    return done.stdout


def driver_line(tmp: Path) -> str:
    return next(ln for ln in status_text(tmp).splitlines() if ln.startswith("driver: "))


@pytest.mark.slurm
@pytest.mark.parametrize("stop", [
    ["scontrol", "requeue"],  # what preemption does: SIGTERM, then the job is queued again
    ["scancel", "--batch", "--signal=USR1"],  # the notice before its time limit
], ids=["requeue", "usr1"])
def test_a_detached_driver_runs_as_a_slurm_job_survives_a_requeue_and_shows_in_status(
    slurm_cluster, tmp_path: Path, stop: list[str]
) -> None:
    name = job_name()
    args = quad_args(tmp_path, "x=interval(-5, 5)", "sleep=8", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.detach=true",
                     f"hydra.sweeper.driver_sbatch={{partition: {slurm_cluster.partition}, "
                     "mem: 1G}",
                     *launcher_args(tmp_path, name, slurm_cluster.partition))
    out = run_cli([QUADRATIC, *args], cwd=tmp_path, env=quad_env(tmp_path),
                  timeout=CLI_TIMEOUT_S).stdout
    head = out.splitlines()[0]
    assert head.startswith("driver submitted as SLURM job "), out
    driver = head.split()[5]
    log = tmp_path / "multirun" / "quadratic" / f"driver-{driver}.log"
    assert f"log:    {log}" in out
    # the driver job runs the sweep (status says so); preempt it (requeue) as soon as its first
    # trial's job runs, so that the signal finds that trial in flight (each trial sleeps 8 s)
    line = wait_for("status to show the driver running",
                    lambda: (ln := driver_line(tmp_path)).startswith(
                        f"driver: SLURM job {driver} running") and ln)
    assert f"log {log}" in line
    wait_for("the driver's first trial job", lambda: squeue(name, "RUNNING"))
    subprocess.run([*stop, driver], check=True, timeout=30)
    wait_for("the driver job to end", lambda: sacct_until_final([driver], timeout=1).get(
        driver) == "COMPLETED" and not squeue(name), timeout=150)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3, log.read_text()[-3000:]
    ids = launched_ids(study)
    assert len(ids) == 3 and jobs_named(name) == set(ids)  # nothing ran twice
    text = log.read_text()
    assert "run 2" in text  # the requeued run of the same job
    # the signal finds one trial in flight (0 finished, or 1 when the status call was slow)
    assert re.search(r"interrupted: [01] finished, 1 in flight; rerun the same command to "
                     r"resume", text), text[-3000:]
    assert "1 re-attached" in text
    assert driver_line(tmp_path).startswith(
        f"driver: SLURM job {driver} ended COMPLETED"), status_text(tmp_path)
    assert "(requeued 1x)" in driver_line(tmp_path)


# ------------------------------------------------------------------------------ 6. arrays
@pytest.mark.slurm
def test_ready_trials_go_out_as_one_job_array_and_slots_still_refill(
    slurm_cluster, tmp_path: Path
) -> None:
    # TPE's startup with seed 0 draws sleep 6, 0.5, 6: trials 0 and 1 are ready together (one
    # array of 2 tasks); trial 2 starts when trial 1 ends, while trial 0 still runs
    name = job_name()
    run_cli([QUADRATIC, *quad_args(tmp_path, "sleep=choice(0.5, 6)", "hydra.sweeper.seed=0",
                                   "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                                   "hydra.sweeper.array=true",
                                   *launcher_args(tmp_path, name, slurm_cluster.partition))],
            cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    t0, t1, t2 = load(tmp_path).trials
    assert [t.state for t in (t0, t1, t2)] == [TrialState.COMPLETE] * 3
    assert [t.params["sleep"] for t in (t0, t1, t2)] == [6, 0.5, 6]
    ids = launched_ids(load(tmp_path))
    array = ids[0].split("_")[0]
    assert ids[:2] == [f"{array}_0", f"{array}_1"], ids  # one array, one task per trial
    assert "_" not in ids[2]  # a single refill is a plain job
    assert t1.datetime_complete <= t2.datetime_start < t0.datetime_complete  # no barrier
    assert sacct_until_final(ids) == dict.fromkeys(ids, "COMPLETED")
    for t in (t0, t1, t2):
        assert t.value == pytest.approx((0 - 2.0) ** 2 + 0 + 0)


# ------------------------------------------------------------------------------ docs
def test_the_docs_launcher_example_runs_as_written(tmp_path: Path) -> None:
    import shlex

    text = (Path(__file__).resolve().parents[2] / "docs" / "slurm.md").read_text()
    block = next(b for b in text.split("```bash\n")[1:] if "mail-type" in b).split("```")[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "hpo.train"]
    proc = run_cli([*argv[1:], "hydra.sweeper.dry_run=true"], cwd=tmp_path,
                   env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    for line in ("#SBATCH --mail-type=END,FAIL", "#SBATCH --mail-user=me@example.org",
                 "#SBATCH --partition=gpu", "#SBATCH --account=myproject",
                 "#SBATCH --constraint=a100", "module load cuda/12.4"):
        assert line in proc.stdout, line
