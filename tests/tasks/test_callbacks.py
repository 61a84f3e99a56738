"""Callbacks against a real SQLite study: reports, curves, pruning, artifacts, epoch lines."""

from __future__ import annotations

import csv
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
import torch

from hpo.callbacks import EpochProgress, MetricsWriter, OptunaReporter
from hpo.errors import MetricNotFoundError
from hpo.tasks import MLP, ClassifierModule, DigitsDataModule
from hpo.trial_context import TrialContext

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    return dm


def module(dm: DigitsDataModule) -> ClassifierModule:
    torch.manual_seed(0)
    return ClassifierModule(
        net=functools.partial(MLP, hidden_dim=32),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-2),
        input_shape=dm.input_shape,
        num_classes=dm.num_classes,
    )


def fit(dm: DigitsDataModule, callbacks: list[L.Callback], epochs: int = 2) -> ClassifierModule:
    model = module(dm)
    L.Trainer(
        max_epochs=epochs, limit_train_batches=3, limit_val_batches=2, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    ).fit(model, datamodule=dm)
    return model


def running_trial(tmp_path: Path, *, pruner: optuna.pruners.BasePruner | None = None,
                  direction: str = "maximize") -> tuple[optuna.Study, TrialContext]:
    """A real SQLite study with one RUNNING trial, and the job's context for it."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction=direction, pruner=pruner)
    trial = study.ask()
    storage = optuna.storages.RDBStorage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), trial.number
    )
    ctx = TrialContext(storage=url, study_name="s", trial_number=trial.number,
                       trial_id=trial_id)
    return study, ctx


def test_reports_curves_and_artifacts(tmp_path: Path, digits: DigitsDataModule) -> None:
    study, ctx = running_trial(tmp_path)
    reporter = OptunaReporter(monitor="val/acc", ctx=ctx,
                              pruner=optuna.pruners.NopPruner())
    writer = MetricsWriter(out_dir=tmp_path / "out")
    model = fit(digits, [reporter, writer])

    assert reporter.active
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING
    assert sorted(trial.intermediate_values) == [0, 1]
    assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())

    curves = trial.user_attrs["curves"]
    assert curves["epoch"] == [0, 1]
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1", "lr"):
        assert len(curves[name]) == 2 and all(isinstance(v, float) for v in curves[name])
    assert curves["val/acc"] == pytest.approx(
        [trial.intermediate_values[0], trial.intermediate_values[1]], rel=1e-5)
    assert curves["lr"] == [0.01, 0.01]
    assert trial.user_attrs["per_class"] == json.loads(json.dumps(model.per_class))
    assert "pruned_at_epoch" not in trial.user_attrs
    assert trial.user_attrs["hpo:host"]  # where the job ran

    # the artifacts
    out = tmp_path / "out"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train/loss", "train/acc", "val/loss", "val/acc",
                             "val/f1", "lr"]
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["val/acc"]) == pytest.approx(curves["val/acc"][1], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["num_parameters"] == model.num_parameters
    assert summary["best"]["val/acc"]["value"] == pytest.approx(max(curves["val/acc"]))
    assert summary["best"]["val/loss"]["value"] == pytest.approx(min(curves["val/loss"]))
    assert set(summary["last"]) >= {"train/loss", "val/f1", "lr"}
    assert set(summary["per_class"]["f1"]) == {str(i) for i in range(10)}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "metrics.csv",
                                                     "summary.json"]  # no temp files left


def test_prunes_and_marks_the_trial(tmp_path: Path, digits: DigitsDataModule) -> None:
    study, ctx = running_trial(tmp_path)
    reporter = OptunaReporter(monitor="val/acc", ctx=ctx,
                              pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    writer = MetricsWriter(out_dir=tmp_path)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at epoch 0: val/acc=0\.\d+"):
        fit(digits, [reporter, writer], epochs=3)
    trial = study.trials[0]
    assert trial.user_attrs["pruned_at_epoch"] == 0
    assert list(trial.intermediate_values) == [0]
    assert trial.user_attrs["curves"]["epoch"] == [0]
    # the writer kept what there was
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs"] == 1
    assert (tmp_path / "curves.png").exists()
    # the sweeper can tell Optuna the trial was pruned
    study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_prune_false_never_prunes(tmp_path: Path, digits: DigitsDataModule) -> None:
    study, ctx = running_trial(tmp_path)
    reporter = OptunaReporter(monitor="val/loss", ctx=ctx, prune=False,
                              pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    fit(digits, [reporter], epochs=1)
    trial = study.trials[0]
    assert list(trial.intermediate_values) == [0]
    assert "pruned_at_epoch" not in trial.user_attrs


def test_context_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ctx = running_trial(tmp_path)
    for key, value in ctx.env().items():
        monkeypatch.setenv(key, value)
    assert OptunaReporter(monitor="val/acc").ctx == ctx


def test_no_context_does_nothing(digits: DigitsDataModule,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for key in TrialContext("x", "x", 0, 0).env():
        monkeypatch.delenv(key, raising=False)
    reporter = OptunaReporter(monitor="no/such/metric")
    fit(digits, [reporter], epochs=1)  # does not even look for the metric
    assert reporter.ctx is None and not reporter.active


def test_storage_error_is_logged_once_and_training_goes_on(
    tmp_path: Path, digits: DigitsDataModule, caplog: pytest.LogCaptureFixture
) -> None:
    study, ctx = running_trial(tmp_path)
    # the driver already finished the trial (e.g. failed it as stale): every write now fails
    study.tell(ctx.trial_number, state=optuna.trial.TrialState.FAIL)
    reporter = OptunaReporter(monitor="val/acc", ctx=ctx)
    with caplog.at_level(logging.WARNING, logger="hpo.trial_context"):
        fit(digits, [reporter], epochs=2)
    warnings = [r for r in caplog.records if r.name == "hpo.trial_context"]
    assert len(warnings) == 1 and "training goes on" in warnings[0].getMessage()
    assert study.trials[0].intermediate_values == {}


def test_missing_monitor_is_a_typed_error(tmp_path: Path, digits: DigitsDataModule) -> None:
    _, ctx = running_trial(tmp_path)
    reporter = OptunaReporter(monitor="val/acuracy", ctx=ctx)
    with pytest.raises(MetricNotFoundError, match=r"'val/acuracy' was not logged.*val/acc"):
        fit(digits, [reporter], epochs=1)


def test_bad_monitor_name() -> None:
    with pytest.raises(ValueError, match="monitor=''"):
        OptunaReporter(monitor="", ctx=None)


def test_each_fold_keeps_its_own_curves_and_per_class(tmp_path: Path,
                                                       digits: DigitsDataModule) -> None:
    """Under cv.folds=2 both fold jobs report to the same trial: nothing is overwritten."""
    study, ctx = running_trial(tmp_path)
    models = []
    for fold in (0, 1):
        reporter = OptunaReporter(monitor="val/acc", ctx=ctx, fold=fold,
                                  pruner=optuna.pruners.NopPruner())
        models.append(fit(digits, [reporter], epochs=2 + fold))
    attrs = study.trials[0].user_attrs
    assert "curves" not in attrs and "per_class" not in attrs
    assert attrs["curves_fold_0"]["epoch"] == [0, 1]
    assert attrs["curves_fold_1"]["epoch"] == [0, 1, 2]
    for fold, model in enumerate(models):
        assert attrs[f"per_class_fold_{fold}"] == json.loads(json.dumps(model.per_class))
    # fold 0 alone reports intermediate values: fold 1's epoch 2 is not among them
    assert sorted(study.trials[0].intermediate_values) == [0, 1]
    assert study.trials[0].intermediate_values[1] == pytest.approx(
        attrs["curves_fold_0"]["val/acc"][1], rel=1e-5)


def test_epoch_progress_logs_one_line_per_epoch(digits: DigitsDataModule,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hpo.callbacks.progress"):
        fit(digits, [EpochProgress(("train/loss", "val/loss", "val/acc", "val/acc"))], epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "hpo.callbacks.progress"]
    assert len(lines) == 2
    for i, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"epoch {i}/2: train/loss=\S+ val/loss=\S+ val/acc=0\.\d+ "
                            r"\(\d+\.\d s\)", line), line


def test_writer_state_survives_a_checkpoint(tmp_path: Path) -> None:
    writer = MetricsWriter(out_dir=tmp_path)
    writer._table.rows = {0: {"val/acc": 0.5}, 1: {"val/acc": 0.75}}
    restored = MetricsWriter(out_dir=tmp_path)
    restored.load_state_dict(writer.state_dict())
    assert restored._table.curves() == {"epoch": [0, 1], "val/acc": [0.5, 0.75]}


def test_curves_round_and_fill_gaps() -> None:
    reporter = OptunaReporter(monitor="val/acc", ctx=None)
    reporter._table.rows = {0: {"lr": 1.234567891e-7, "val/loss": float("nan")},
                            1: {"lr": 0.1, "val/loss": 2.0, "val/acc": 0.123456789}}
    curves: dict[str, Any] = reporter._table.curves()
    assert curves == {"epoch": [0, 1], "val/loss": [None, 2.0], "val/acc": [None, 0.123457],
                      "lr": [1.23457e-7, 0.1]}
