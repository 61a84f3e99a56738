"""Sweeps on a real one-node SLURM cluster (scripts/slurm-local.sh): jobs, kills, no batch
barrier, dry run, rejections, Lightning trials with pruning, and preemption with resume.

Every sweep runs in its own ``tmp_path`` with SQLite storage and a job name of its own, so that
squeue/sacct can tell its jobs from those of other sessions sharing the cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import APPS, clean_env, run_cli
from hpo import attrs as hpo_attrs
from hpo import status

optuna.logging.set_verbosity(optuna.logging.WARNING)

CLI_TIMEOUT_S = 180
TRAIN = ["-m", "hpo.train"]
QUADRATIC = str(APPS / "quadratic" / "app.py")


def launcher_args(tmp: Path, name: str, partition: str, *, mem_gb: int = 1,
                  timeout_min: int = 5) -> list[str]:
    """Small jobs: signal_delay_s well below timeout_min*60, or every job is a timeout."""
    return [
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.partition={partition}",
        f"hydra.launcher.mem_gb={mem_gb}",
        f"hydra.launcher.timeout_min={timeout_min}",
        "hydra.launcher.signal_delay_s=30",
        f"hydra.launcher.submitit_folder={tmp / 'submitit'}/%j",
        f"hydra.launcher.name={name}",
    ]


def quad_args(tmp: Path, *extra: str) -> list[str]:
    return ["-m", f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}", *extra]


def quad_env(tmp: Path) -> dict[str, str]:
    return clean_env(HPO_TEST_SWEEP_DIR=str(tmp / "multirun"))


def load(tmp: Path, name: str = "quadratic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 's.db'}")


def job_name() -> str:
    return f"hpotest-{uuid.uuid4().hex[:8]}"


def sacct_until_final(job_ids: list[str], timeout: float = 20) -> dict[str, str]:
    """Job id -> sacct state, waiting until accounting has recorded all jobs as ended."""
    deadline = time.monotonic() + timeout
    while True:
        states = {j: s.state for j, s in status.sacct_states(job_ids).items()}
        ended = all(j in states and states[j] not in ("PENDING", "RUNNING", "COMPLETING")
                    for j in job_ids)
        if ended or time.monotonic() > deadline:
            return states
        time.sleep(1)


def jobs_named(name: str) -> set[str]:
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", name, "-S", "now-1days", "-o", "JobID"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    queued = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                            text=True, timeout=30, check=True)
    return set(done.stdout.split()) | set(queued.stdout.split())


def running_job(name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        if out:
            return out[0]
        time.sleep(0.3)
    pytest.fail(f"no job named {name} started within {timeout} s")


def submitted_job(t: optuna.trial.FrozenTrial) -> str:
    """The SLURM job id the sweeper recorded when it submitted the trial's (first) job."""
    job = hpo_attrs.launch_job(t.user_attrs)
    assert job is not None and job.executor == "slurm", t.user_attrs
    return job.ids[0]


def last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Set the environment variable HYDRA_FULL")]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------ no cluster
def _sbatch_failure(tmp: Path, stderr: str, **options: str) -> Exception:
    """What submitit raises when sbatch refuses a script with these #SBATCH options."""
    from submitit.core.utils import FailedJobError

    script = tmp / ".submission_file_x.sh"
    script.write_text("#!/bin/bash\n" + "".join(
        f"#SBATCH --{k.replace('_', '-')}={v}\n" for k, v in options.items()))
    try:
        try:
            raise subprocess.CalledProcessError(1, ["sbatch", str(script)], output="",
                                                stderr=stderr)
        except subprocess.CalledProcessError as cause:
            raise FailedJobError(stderr) from cause
    except FailedJobError as exc:
        return exc


@pytest.mark.parametrize(
    ("stderr", "options", "expected"),
    [
        ("sbatch: error: Memory specification can not be satisfied\n"
         "sbatch: error: Batch job submission failed: Requested node configuration is not "
         "available", {"mem": "64GB", "partition": "p1"},
         ["hydra.launcher.mem_gb=64 cannot be satisfied on partition p1",
          "lower hydra.launcher.mem_gb"]),
        ("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job "
         "submission failed: Invalid partition name specified", {"partition": "nope"},
         ["partition 'nope' does not exist", "set hydra.launcher.partition"]),
        ("sbatch: error: Invalid generic resource (gres) specification",
         {"gpus_per_node": "1", "partition": "cpu"},
         ["hydra.launcher.gpus_per_node=1 is not available on partition cpu",
          "hydra.launcher.gpus_per_node=null"]),
        ("sbatch: error: Batch job submission failed: More processors requested than "
         "permitted", {"cpus_per_task": "64", "nodes": "1", "partition": "p"},
         ["hydra.launcher.cpus_per_task=64 asks for more CPUs", "lower"]),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
         "combination specified", {"account": "nope", "partition": "p"},
         ["hydra.launcher.account=nope is not an account you may use"]),
        ("sbatch: error: Batch job submission failed: Invalid qos specification",
         {"qos": "gold", "partition": "p"}, ["hydra.launcher.qos=gold is not a QOS"]),
        ("sbatch: error: Batch job submission failed: Requested time limit is invalid "
         "(missing or exceeds some limit)", {"time": "9999", "partition": "p"},
         ["hydra.launcher.timeout_min=9999 exceeds the time limit",
          "lower hydra.launcher.timeout_min"]),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
         "(job submit limit, user's size and/or time limits)", {"partition": "p"},
         ["accounting/QOS limit", "hydra.sweeper.n_jobs"]),
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
         "(connect failure)", {"partition": "p"}, None),
    ],
    ids=["memory", "partition", "gres", "cpus", "account", "qos", "time", "qos-policy",
         "controller-down"],
)
def test_rejection_error_names_the_setting_and_the_fix(
    tmp_path: Path, stderr: str, options: dict[str, str], expected: list[str] | None
) -> None:
    from hpo.errors import ConfigError
    from hydra_plugins.hpo_sweeper._slurm import rejection_error

    err = rejection_error(_sbatch_failure(tmp_path, stderr, **options))
    if expected is None:  # transient: a lost job, retried
        assert err is None
        return
    assert isinstance(err, ConfigError)
    text = str(err)
    assert text.startswith("SLURM rejected the job: ") and "\n" not in text
    for part in expected:
        assert part in text, text


def test_rejection_error_ignores_other_failures_and_knows_a_missing_slurm() -> None:
    from submitit.core.utils import UncompletedJobError

    from hydra_plugins.hpo_sweeper._slurm import lost_job_reason, rejection_error

    lost = UncompletedJobError("Job 40 (task: 0) with path /x/40_0_result.pkl\n"
                               "has not produced any output (state: CANCELLED by 0)")
    assert rejection_error(lost) is None
    assert lost_job_reason(lost) == "SLURM job 40 ended CANCELLED by 0 without a result"
    assert rejection_error(RuntimeError("x=3 is too large")) is None
    missing = rejection_error(RuntimeError('Could not detect "srun", are you indeed on a '
                                           "slurm cluster?"))
    assert missing is not None and "hydra/launcher=submitit_local" in str(missing)


def test_sbatch_preview_renders_the_launcher_params_without_slurm(tmp_path: Path) -> None:
    from hydra_plugins.hpo_sweeper._slurm import sbatch_preview

    params = {  # hydra-submitit-launcher's params for slurm_small + overrides
        "submitit_folder": f"{tmp_path}/.submitit/%j", "timeout_min": 30, "cpus_per_task": 2,
        "gpus_per_node": None, "tasks_per_node": 1, "mem_gb": 4, "nodes": 1, "name": "train",
        "stderr_to_stdout": False, "partition": "cpu", "qos": None, "account": "proj",
        "signal_delay_s": 60, "max_num_timeout": 1, "array_parallelism": 256,
        "additional_parameters": {"mail-type": "END,FAIL"}, "setup": ["module load x"],
    }
    text = sbatch_preview(params, ["optimizer.lr=0.01", "model=cnn"])
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for flag in ("--partition=cpu", "--account=proj", "--mem=4GB", "--cpus-per-task=2",
                 "--time=30", "--job-name=train", "--signal=USR2@60", "--mail-type=END,FAIL",
                 f"--output={tmp_path}/.submitit/%j/%j_0_log.out"):
        assert f"#SBATCH {flag}" in lines, flag
    assert "module load x" in lines
    assert not any("qos" in ln or "gpus" in ln or "max-num-timeout" in ln for ln in lines)
    assert lines[-1] == ("# trial overrides (carried in the job's pickle): "
                         "optimizer.lr=0.01 model=cnn")
    assert "-m submitit.core._submit" in text


# ------------------------------------------------------------------------------ (a) + (d)
@pytest.fixture(scope="module")
def quad_sweep(slurm_cluster, tmp_path_factory: pytest.TempPathFactory):
    """The quadratic app on SLURM: 6 trials in 2 slots (run once for tests a and d)."""
    tmp = tmp_path_factory.mktemp("slurm_a")
    name = job_name()
    launcher = launcher_args(tmp, name, slurm_cluster.partition)
    run_cli([QUADRATIC, *quad_args(tmp, "x=interval(-5, 5)", "y=range(0, 3)",
                                       "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
                                       *launcher)],
            cwd=tmp, env=quad_env(tmp), timeout=CLI_TIMEOUT_S)
    return tmp, name, launcher


@pytest.mark.slurm
def test_sweep_on_slurm_completes_and_jobs_are_in_sacct(quad_sweep) -> None:
    tmp, _, _ = quad_sweep
    trials = load(tmp).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    job_ids = [submitted_job(t) for t in trials]
    assert all(j and j.isdigit() for j in job_ids), job_ids
    assert len(set(job_ids)) == 6  # one SLURM job per trial
    states = sacct_until_final(job_ids)
    assert states == dict.fromkeys(job_ids, "COMPLETED")


@pytest.mark.slurm
def test_dry_run_prints_the_sbatch_script_and_submits_nothing(quad_sweep) -> None:
    tmp, name, launcher = quad_sweep
    swept = {submitted_job(t) for t in load(tmp).trials}
    dry = tmp / "dry"
    dry.mkdir()
    out = run_cli([QUADRATIC, "-m", f"hydra.sweeper.storage=sqlite:///{dry / 's.db'}",
                   "x=interval(-5, 5)", "y=range(0, 3)", "hydra.sweeper.n_trials=6",
                   "hydra.sweeper.n_jobs=2", "hydra.sweeper.dry_run=true", *launcher],
                  cwd=tmp, env=quad_env(tmp), timeout=CLI_TIMEOUT_S).stdout
    assert "nothing was submitted" in out
    script = out[out.index("#!/bin/bash"):out.index("# trial overrides")]
    assert f"#SBATCH --partition={launcher[1].split('=')[1]}" in script
    assert "#SBATCH --mem=1GB" in script and "#SBATCH --signal=USR2@30" in script
    # exactly what submitit wrote for the real jobs of the same launcher config
    submitted = next((tmp / "submitit").glob("*/*_submission.sh")).read_text()
    assert script.strip() == submitted.strip()
    # the script's trial overrides are those of the planned first trial (this app has no
    # `agent` node: TPE proposes it, no baseline)
    (planned,) = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("  trial 0:")]
    assert planned in out[out.index("# trial overrides"):]
    # no job was submitted (none queued, none in accounting, none in submitit's folder) and
    # no study created
    time.sleep(2)
    assert jobs_named(name) <= swept
    assert {p.name for p in (tmp / "submitit").iterdir() if p.is_dir()} == swept
    db = dry / "s.db"
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


# ------------------------------------------------------------------------------ (b)
@pytest.mark.slurm
def test_cancelled_job_is_failed_and_retried_with_the_same_params(
    slurm_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = job_name()
    # submitit ignores SIGTERM: scancel kills the job KillWait (10 s) later, before sleep ends
    args = quad_args(tmp_path, "x=interval(-5, 5)", "sleep=15", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_retries=1",
                     *launcher_args(tmp_path, name, slurm_cluster.partition))
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen([sys.executable, QUADRATIC, *args], cwd=tmp_path,
                            env=quad_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        victim = running_job(name)
        subprocess.run(["scancel", victim], check=True, timeout=30)
        rc = proc.wait(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "sweep.log").read_text()
    assert rc == 0, output[-3000:]
    trials = load(tmp_path).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, output[-3000:]
    lost = failed[0]
    assert lost.user_attrs["hpo:retried"] is True
    assert "job lost" in lost.user_attrs["hpo:error"] and victim in lost.user_attrs["hpo:error"]
    (retry,) = [t for t in trials if t.user_attrs.get("hpo:retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    # the budget (2 trials) is reached without counting the retried one
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    # status finds the cancelled job in sacct through the error's job id
    sacct_until_final([victim])
    assert status.main(["--storage", f"sqlite:///{tmp_path / 's.db'}", "--study",
                        "quadratic"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines()
               if ln.split()[:2] == [str(lost.number), "FAIL"])
    assert "CANCELLED" in row and victim in row


# ------------------------------------------------------------------------------ (c)
@pytest.mark.slurm
def test_no_batch_barrier_a_slot_refills_while_the_other_runs(
    slurm_cluster, tmp_path: Path
) -> None:
    # TPE's startup with seed 0 draws sleep 6, 0.5, 6: trial 2 starts when trial 1 ends
    run_cli([QUADRATIC, *quad_args(tmp_path, "sleep=choice(0.5, 6)", "hydra.sweeper.seed=0",
                                       "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                                       *launcher_args(tmp_path, job_name(),
                                                      slurm_cluster.partition))],
            cwd=tmp_path, env=quad_env(tmp_path), timeout=CLI_TIMEOUT_S)
    trials = load(tmp_path).trials
    assert all(t.state == TrialState.COMPLETE and submitted_job(t)
               for t in trials)
    short = [t for t in trials if t.params["sleep"] == 0.5]
    long = [t for t in trials if t.params["sleep"] == 6]
    assert short and long, [t.params for t in trials]
    refilled = [
        (s.number, t.number, lg.number)
        for s in short for lg in long for t in trials
        if t.number not in (s.number, lg.number)
        and s.datetime_complete <= t.datetime_start < lg.datetime_complete
        and lg.datetime_start < s.datetime_complete
    ]
    assert refilled, [(t.number, t.params, t.datetime_start, t.datetime_complete)
                      for t in trials]


# ------------------------------------------------------------------------------ (e)
@pytest.mark.slurm
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("hydra.launcher.mem_gb=500",
         ["hydra.launcher.mem_gb=500 cannot be satisfied", "lower hydra.launcher.mem_gb"]),
        ("hydra.launcher.partition=nope",
         ["partition 'nope' does not exist", "set hydra.launcher.partition to one of"]),
    ],
    ids=["memory", "partition"],
)
def test_rejected_job_stops_the_sweep_with_one_line(
    slurm_cluster, tmp_path: Path, override: str, expected: list[str]
) -> None:
    started = time.monotonic()
    proc = run_cli([QUADRATIC, *quad_args(tmp_path, "x=interval(-5, 5)",
                                              "hydra.sweeper.n_trials=4",
                                              "hydra.sweeper.n_jobs=2",
                                              *launcher_args(tmp_path, job_name(),
                                                             slurm_cluster.partition),
                                              override)],
                   cwd=tmp_path, env=quad_env(tmp_path), timeout=120, check=False)
    assert proc.returncode != 0
    line = last_error_line(proc.stderr)
    assert line.startswith("SLURM rejected the job: "), proc.stderr[-2000:]
    for text in expected:
        assert text in line
    assert time.monotonic() - started < 100


# ------------------------------------------------------------------------------ (f) + (g)
@pytest.fixture(scope="module")
def train_sweep(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    """hpo.train on SLURM: lr 1e-2 (learns) and 1e-7 (does not) in 2 slots, a threshold pruner.

    TPE with seed 0 draws both learning rates in its first two trials.
    """
    tmp = tmp_path_factory.mktemp("slurm_train")
    run_cli([*TRAIN, "-m", "agent=none", "search_space=none", "data=digits",
             "model=mlp", "optimizer.lr=choice(1e-2, 1e-7)",
             "hydra.sweeper.sampler={_target_: optuna.samplers.TPESampler, seed: 0}",
             "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.5}",
             "trainer.max_epochs=3", "trainer.accelerator=cpu", "early_stopping.patience=null",
             "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
             f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}",
             f"hydra.sweep.dir={tmp / 'sweep'}",
             *launcher_args(tmp, job_name(), slurm_cluster.partition, mem_gb=2)],
            cwd=tmp, env=clean_env(), timeout=CLI_TIMEOUT_S)
    return optuna.load_study(study_name=None, storage=f"sqlite:///{tmp / 's.db'}")


@pytest.mark.slurm
def test_lightning_trials_run_in_slurm_jobs_and_report_through_storage(
    train_sweep: optuna.Study,
) -> None:
    trials = train_sweep.trials
    assert len(trials) == 2
    assert sorted(t.params["optimizer.lr"] for t in trials) == [1e-7, 1e-2]
    good = next(t for t in trials if t.params["optimizer.lr"] == 1e-2)
    assert good.state == TrialState.COMPLETE and good.value > 0.5
    assert sorted(good.intermediate_values) == [0, 1, 2]  # reported by the job, per epoch
    assert "curves" in good.user_attrs
    for t in trials:  # the job recorded where it ran; the sweeper the job id it submitted
        assert t.user_attrs["hpo:slurm_job_id"] == submitted_job(t)
        assert t.user_attrs["hpo:host"]
    ids = [submitted_job(t) for t in trials]
    assert sacct_until_final(ids) == dict.fromkeys(ids, "COMPLETED")


@pytest.mark.slurm
def test_a_bad_trial_is_pruned_across_processes(train_sweep: optuna.Study) -> None:
    bad = next(t for t in train_sweep.trials if t.params["optimizer.lr"] == 1e-7)
    assert bad.state == TrialState.PRUNED
    assert bad.user_attrs["pruned_at_epoch"] == 0
    assert bad.intermediate_values[0] < 0.5
    assert "pruned at epoch 0" in bad.user_attrs["hpo:pruned"]


# ------------------------------------------------------------------------------ preemption
@pytest.mark.slurm
def test_preempted_trial_is_requeued_and_resumes_from_its_checkpoint(
    slurm_cluster, tmp_path: Path
) -> None:
    """USR2 (preemption notice) → submitit checkpoints the launcher and requeues the job; the
    requeued job reruns the same trial in the same output dir and resumes from last.ckpt."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    epochs = 8
    args = [
        "-m", "agent=none", "search_space=none", "data=digits", "model=mlp",
        "optimizer.lr=choice(1e-2)", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu",
        "early_stopping.patience=null", "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        # timeout_min >= 11: submitit tells a USR2 this early from a timeout (preemption)
        *launcher_args(tmp_path, job_name(), slurm_cluster.partition, mem_gb=2,
                       timeout_min=12),
    ]
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen([sys.executable, *TRAIN, *args], cwd=tmp_path,
                            env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        job = _job_after_epochs(url, proc, 2, timeout=120)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "sweep.log").read_text()
    assert rc == 0, output[-3000:]
    (trial,) = optuna.load_study(study_name=None, storage=url).trials  # the same trial
    assert trial.state == TrialState.COMPLETE, output[-3000:]
    attrs = trial.user_attrs
    assert attrs["hpo:resumed_from_epoch"] >= 1, attrs
    assert attrs["hpo:slurm_restarts"] == 1  # written by the requeued run of the same job
    assert attrs["hpo:slurm_job_id"] == job == submitted_job(trial)
    assert sorted(trial.intermediate_values) == list(range(epochs))  # no gap, no restart


def _job_after_epochs(url: str, proc: subprocess.Popen[bytes], n: int, timeout: float) -> str:
    """The trial's SLURM job id once it has reported ``n`` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {n} epochs")
        try:
            trials = optuna.load_study(study_name=None, storage=url).trials
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
            trials = []  # not created yet
        if trials and len(trials[0].intermediate_values) >= n:
            job = trials[0].user_attrs.get("hpo:slurm_job_id")
            assert job and re.fullmatch(r"\d+", job)
            return str(job)
        time.sleep(0.5)
    pytest.fail(f"the trial did not report {n} epochs within {timeout} s")
