"""The job's one channel to its trial (hpo.trial_context.TrialReporter) on a real SQLite study."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
import pytest

from hpo import trial_context
from hpo.trial_context import (
    TrialContext,
    TrialReporter,
    fold_key,
    job_fold,
    per_class_across_folds,
    placement_attrs,
    record_attrs,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_with_trial(tmp_path: Path, directions: tuple[str, ...] = ("maximize",)
                     ) -> tuple[optuna.Study, TrialContext]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=list(directions))
    trial = study.ask()
    return study, TrialContext(storage=url, study_name="s", trial_number=trial.number,
                               trial_id=trial._trial_id)


def test_reports_once_per_step_and_prunes(tmp_path: Path) -> None:
    study, ctx = study_with_trial(tmp_path)
    reporter = TrialReporter(ctx, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    assert reporter.open() and reporter.active and reporter.reports_values
    assert reporter.report(0.7, 0)
    assert not reporter.report(0.1, 0)  # a step is reported once: the first value stays
    assert not reporter.report(math.nan, 1) and not reporter.report(None, 1)
    assert not reporter.should_prune()
    assert reporter.report(0.2, 1)
    assert reporter.should_prune()
    reporter.mark_pruned(1)
    reporter.store_curves({"epoch": [0, 1], "val/acc": [0.7, 0.2]})
    reporter.store_per_class({"f1": {"cat": 0.5}})
    t = study.trials[0]
    assert t.intermediate_values == {0: 0.7, 1: 0.2}
    assert t.user_attrs["pruned_at_epoch"] == 1
    assert t.user_attrs["curves"] == {"epoch": [0, 1], "val/acc": [0.7, 0.2]}
    assert t.user_attrs["per_class"] == {"f1": {"cat": 0.5}}
    assert t.user_attrs["hpo:host"] == placement_attrs({})["hpo:host"]


def test_prune_false_and_no_pruner_never_prune(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, ctx = study_with_trial(tmp_path)
    monkeypatch.delenv(trial_context.ENV_PRUNER, raising=False)
    never = TrialReporter(ctx, prune=False, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    never.open()
    never.report(0.1, 0)
    assert not never.should_prune()
    default = TrialReporter(ctx)  # no HPO_PRUNER: Optuna's NopPruner
    default.open()
    assert not default.should_prune()
    monkeypatch.setenv(trial_context.ENV_PRUNER, trial_context.encode_pruner(
        optuna.pruners.ThresholdPruner(lower=2.0)))
    swept = TrialReporter(ctx)  # the sweep's pruner, from the environment
    swept.open()
    assert swept.should_prune()


def test_fold_jobs_keep_their_own_keys(tmp_path: Path) -> None:
    study, ctx = study_with_trial(tmp_path)
    folds = [TrialReporter(ctx, fold=i, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
             for i in range(3)]
    for i, rep in enumerate(folds):
        rep.open()
        rep.report(0.9 - 0.1 * i, 0)
        rep.store_curves({"epoch": [0], "val/acc": [0.9 - 0.1 * i]})
        rep.store_per_class({"dice": {"liver": 0.8 + 0.05 * i, "spleen": 0.6}})
    attrs = study.trials[0].user_attrs
    assert "per_class" not in attrs and "curves" not in attrs
    assert [attrs[f"curves_fold_{i}"]["val/acc"] for i in range(3)] == [[0.9], [0.8], [0.7]]
    assert attrs["per_class_fold_2"] == {"dice": {"liver": pytest.approx(0.9), "spleen": 0.6}}
    # only fold 0 reports; every fold asks the pruner about the trial's (fold 0) curve
    assert study.trials[0].intermediate_values == {0: 0.9}
    assert [rep.reports_values for rep in folds] == [True, False, False]
    assert not any(rep.should_prune() for rep in folds)


def test_fold_helpers() -> None:
    assert job_fold(None) is None and job_fold({"folds": 1, "fold": 0}) is None
    assert job_fold({"folds": 5, "fold": 3}) == 3
    assert fold_key("per_class", None) == "per_class"
    assert fold_key("per_class", 0) == "per_class_fold_0"


def test_per_class_across_folds() -> None:
    summary = per_class_across_folds([
        {"dice": {"liver": 0.8, "spleen": 0.5}},
        {"dice": {"liver": 0.9, "spleen": None}},
        {"dice": {"liver": 1.0, "spleen": float("nan")}, "acc": {"liver": 0.7}},
    ])
    assert summary["mean"]["dice"] == {"liver": pytest.approx(0.9), "spleen": 0.5}
    assert summary["std"]["dice"] == {"liver": pytest.approx(0.1), "spleen": None}
    assert summary["mean"]["acc"] == {"liver": 0.7} and summary["std"]["acc"] == {"liver": None}


def test_multi_objective_stores_curves_without_reports(tmp_path: Path) -> None:
    study, ctx = study_with_trial(tmp_path, ("maximize", "minimize"))
    reporter = TrialReporter(ctx, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    reporter.open()
    assert reporter.multi_objective and not reporter.reports_values
    assert not reporter.report(0.5, 0) and not reporter.should_prune()
    reporter.store_curves({"epoch": [0]})
    assert study.trials[0].user_attrs["curves"] == {"epoch": [0]}
    assert study.trials[0].intermediate_values == {}


def test_without_context_or_trial_it_does_nothing(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    outside = TrialReporter(None)
    assert not outside.open() and not outside.report(1.0, 0) and not outside.should_prune()
    outside.set_attrs({"k": 1})
    _, ctx = study_with_trial(tmp_path)
    lost = TrialContext(storage=ctx.storage, study_name="no-such-study", trial_number=0,
                        trial_id=0)
    with caplog.at_level(logging.WARNING, logger="hpo.trial_context"):
        reporter = TrialReporter(lost, job="training")
        assert not reporter.open()
    (warning,) = [r for r in caplog.records if r.name == "hpo.trial_context"]
    assert "no-such-study" in warning.getMessage() and "training goes on" in warning.getMessage()


def test_storage_errors_are_logged_once(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    study, ctx = study_with_trial(tmp_path)
    reporter = TrialReporter(ctx, job="the command")
    reporter.open()
    study.tell(ctx.trial_number, state=optuna.trial.TrialState.FAIL)  # every write now fails
    with caplog.at_level(logging.WARNING, logger="hpo.trial_context"):
        reporter.report(0.5, 0)
        reporter.store_curves({"epoch": [0]})
        reporter.set_attrs({"a": 1, "b": 2})
    warnings = [r for r in caplog.records if r.name == "hpo.trial_context"]
    assert len(warnings) == 1 and "the command goes on" in warnings[0].getMessage()


def test_record_attrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study, ctx = study_with_trial(tmp_path)
    for key in ctx.env():
        monkeypatch.delenv(key, raising=False)
    record_attrs({"hpo:x": 1})  # no trial context: nothing happens, nothing fails
    for key, value in ctx.env().items():
        monkeypatch.setenv(key, value)
    record_attrs({"hpo:x": 2})
    assert study.trials[0].user_attrs["hpo:x"] == 2


def test_placement_attrs_under_slurm() -> None:
    attrs = placement_attrs({"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2",
                             "SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"})
    assert attrs["hpo:slurm_job_id"] == "7_2" and attrs["hpo:slurm_restarts"] == 1
    assert placement_attrs({"SLURM_JOB_ID": "9"})["hpo:slurm_job_id"] == "9"
    assert "hpo:slurm_restarts" not in placement_attrs({"SLURM_RESTART_COUNT": "0"})
