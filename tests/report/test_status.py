"""``python -m hpo.status`` on a small real SQLite study made with plain Optuna."""

from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import run_cli
from hpo import status

optuna.logging.set_verbosity(optuna.logging.WARNING)
DISTS = {
    "model": CategoricalDistribution(["mlp", "cnn"]),
    "optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True),
}
T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def _trial(state: TrialState, model: str, lr: float, value: float | None,
           attrs: dict[str, object]) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None,
        params={"model": model, "optimizer.lr": lr}, distributions=DISTS, user_attrs=attrs,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """sqlite URL of a storage with study 'digits' (maximize val/acc) and 'other'."""
    path = tmp_path_factory.mktemp("status") / "hpo.db"
    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=url, study_name="digits", direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val/acc"])
    study.set_user_attr("hpo:llm_calls_total", 3)
    study.set_user_attr("hpo:cost_usd_total", 0.0123)
    rows = [
        (TrialState.COMPLETE, "mlp", 1e-3, 0.91, {"hpo:source": "baseline", "hpo:job_id": "101"}),
        (TrialState.COMPLETE, "cnn", 3e-3, 0.97, {"hpo:source": "llm", "hpo:job_id": "102"}),
        (TrialState.COMPLETE, "mlp", 2e-2, 0.93, {"hpo:source": "llm"}),
        (TrialState.COMPLETE, "cnn", 1e-4, 0.88, {"hpo:source": "fallback"}),
        (TrialState.PRUNED, "mlp", 1e-5, None, {"hpo:source": "llm", "pruned_at_epoch": 1}),
        (TrialState.FAIL, "cnn", 1e-2, None, {
            "hpo:source": "llm", "hpo:retried": True,
            "hpo:error": "job lost: SLURM job 104 ended CANCELLED by 0 without a result"}),
        (TrialState.COMPLETE, "cnn", 1e-2, 0.95, {"hpo:source": "llm", "hpo:retry_of": 5}),
    ]
    for i, (state, model, lr, value, attrs) in enumerate(rows):
        t = _trial(state, model, lr, value, attrs)
        t.datetime_start = T0 + dt.timedelta(minutes=i)
        t.datetime_complete = t.datetime_start + dt.timedelta(seconds=30 + i)
        study.add_trial(t)
    running = study.ask(DISTS)  # a trial still RUNNING, with its job's own id
    study._storage.set_trial_user_attr(running._trial_id, "hpo:slurm_job_id", "105")
    other = optuna.create_study(storage=url, study_name="other", directions=["minimize"] * 2)
    other.add_trial(create_trial(values=[1.0, 2.0], params={}, distributions={}))
    return url


def test_lists_studies_with_states_and_best(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--storage", db]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]}
    # study, direction, trials, complete, pruned, fail, running, waiting, best...
    assert lines["digits"][:8] == ["digits", "maximize", "8", "5", "1", "1", "1", "0"]
    assert "0.97 (#1)" in out
    assert lines["other"][:3] == ["other", "minimize,minimize", "1"]
    assert "1 on the Pareto front" in out


def test_one_study_lists_trials(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--storage", db, "--study", "digits", "--no-sacct"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert "maximize val/acc" in head and "8 trials" in head and "1 running" in head
    assert "best: 0.97 (#1)" in out
    assert "LLM: 3 calls" in out and "$0.0123" in out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln[:1].isdigit()}
    assert "COMPLETE" in rows["1"] and "0.97" in rows["1"] and "llm" in rows["1"]
    assert " 102 " in rows["1"]  # job id from hpo:job_id
    assert "31.0s" in rows["1"]  # duration
    assert "pruned at epoch 1" in rows["4"]
    assert " 104 " in rows["5"] and "retried" in rows["5"]  # job id from the lost-job error
    assert "retry of #5" in rows["6"]
    assert "RUNNING" in rows["7"] and " 105 " in rows["7"]


def test_leaderboard_and_best_per_model(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(["--storage", db, "--study", "digits", "--leaderboard", "--top", "3",
                        "--no-sacct"]) == 0
    out = capsys.readouterr().out
    board = out[out.index("leaderboard of 'digits'"):]
    assert "top 3 of 5 complete" in board
    ranks = [ln.split() for ln in board.splitlines() if ln[:1].isdigit()]
    top = ranks[:3]
    assert [r[1] for r in top] == ["1", "6", "2"]  # trial numbers by val/acc, best first
    assert "model=cnn" in " ".join(top[0]) and "optimizer.lr=0.003" in " ".join(top[0])
    per_model = board[board.index("best trial per model:"):]
    rows = {ln.split()[0]: ln.split() for ln in per_model.splitlines()[3:]}
    assert rows["cnn"][1:3] == ["1", "0.97"]
    assert rows["mlp"][1:3] == ["2", "0.93"]


def test_leaderboard_alone_needs_a_study_when_several(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.main(["--storage", db, "--leaderboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds 2 studies" in err and "--study" in err


def test_trial_job_id_sources() -> None:
    t = create_trial(value=1.0, user_attrs={"hpo:job_id": "job_id_for_3"})
    assert status.trial_job_id(t) is None  # the basic launcher's placeholder
    t = create_trial(value=1.0, user_attrs={"hpo:slurm_job_id": "7_2", "hpo:job_id": "7"})
    assert status.trial_job_id(t) == "7_2"


def test_unknown_study_and_missing_storage_fail_with_one_line(db: str, tmp_path: Path) -> None:
    proc = run_cli(["-m", "hpo.status", "--storage", db, "--study", "nope"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "study 'nope' is not in storage" in proc.stderr and "'digits'" in proc.stderr
    missing = tmp_path / "missing.db"
    proc = run_cli(["-m", "hpo.status", "--storage", f"sqlite:///{missing}"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not missing.exists()  # status never creates a database


def test_trial_job_id_from_the_launch_record() -> None:
    from hpo import attrs

    job = attrs.LaunchedJobs("slurm", "/s/%j", ("41_3",))
    t = create_trial(value=1.0, user_attrs={attrs.LAUNCH: attrs.launch_record("h:1:1", [],
                                                                              job=job)})
    assert status.trial_job_id(t) == "41_3"
    local = attrs.LaunchedJobs("local", "/s/%j", ("1234",))  # a pid: no SLURM job
    t = create_trial(value=1.0, user_attrs={attrs.LAUNCH: attrs.launch_record("h:1:1", [],
                                                                              job=local)})
    assert status.trial_job_id(t) is None


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([["7", "RUNNING", "node3", "2026-11-30T07:00:00"]],
         "driver: SLURM job 7 running on node3 since 2026-11-30T07:00:00; log /l/d-7.log"),
        ([["7", "REQUEUED", "node3", "2026-11-30T07:00:00"],
          ["7", "PENDING", "None assigned", "Unknown"]],
         "driver: SLURM job 7 requeued, pending (requeued 1x); log /l/d-7.log"),
        ([["7", "PENDING", "None assigned", "Unknown"]],
         "driver: SLURM job 7 pending; log /l/d-7.log"),
        ([["7", "REQUEUED", "node3", "2026-11-30T07:00:00"],
          ["7", "COMPLETED", "node2", "2026-11-30T07:05:00"]],
         "driver: SLURM job 7 ended COMPLETED on node2 since 2026-11-30T07:05:00 "
         "(requeued 1x); log /l/d-7.log"),
        ([], "driver: SLURM job 7 gone (unknown to sacct); log /l/d-7.log"),
        (None, "driver: SLURM job 7 unknown (sacct failed); log /l/d-7.log"),
    ],
)
def test_a_driver_jobs_state_from_sacct(lines: list[list[str]] | None, expected: str) -> None:
    assert status.job_driver_state("7", lines, log="/l/d-7.log").text() == expected


def test_a_driver_process_state_from_the_study() -> None:
    from hpo import attrs

    me = attrs.driver_id()
    gone = "h-elsewhere:1:1"
    running = {attrs.DRIVERS: [attrs.driver_record(gone, None, since=0.0),
                               attrs.driver_record(me, None, since=0.0)]}
    line = status.driver_state(running, use_sacct=False).text()  # type: ignore[union-attr]
    assert line.startswith("driver: process running on ") and f"(pid {os.getpid()})" in line
    elsewhere = {attrs.DRIVERS: [attrs.driver_record(gone, None)]}
    assert status.driver_state(elsewhere).text() == (  # type: ignore[union-attr]
        "driver: process unknown on h-elsewhere (pid 1)")
    assert status.driver_state({}) is None
