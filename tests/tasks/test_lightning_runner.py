"""The Lightning runner (hpo.tasks.lightning) in-process: OOM step-down decisions, quiet output,
one metrics.csv, per-fold keys; no CLI."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hpo import trial_context
from hpo.errors import ConfigError
from hpo.paths import config_dir
from hpo.tasks import lightning as runner

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def composer() -> Iterator[Any]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=["trainer=debug", *o])


@pytest.fixture
def outside_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path (the output dir outside Hydra) with no trial context."""
    monkeypatch.chdir(tmp_path)
    for key in trial_context.TrialContext("x", "x", 0, 0).env():
        monkeypatch.delenv(key, raising=False)
    return tmp_path


@pytest.fixture
def in_trial(outside_sweep: Path, monkeypatch: pytest.MonkeyPatch) -> optuna.Study:
    """A RUNNING trial of a real SQLite study as this process's trial context."""
    url = f"sqlite:///{outside_sweep / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial = study.ask()
    ctx = trial_context.TrialContext(url, "s", trial.number, trial._trial_id)
    for key, value in ctx.env().items():
        monkeypatch.setenv(key, value)
    return study


# --- OOM step-down -----------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "minimum", "expected"),
                         [(64, 8, 32), (16, 8, 8), (8, 8, None), (9, 4, 4), (1, 1, None),
                          (2, 0, 1)])
def test_next_batch_size(batch: int, minimum: int, expected: int | None) -> None:
    assert runner.next_batch_size(batch, minimum) == expected


def test_what_counts_as_out_of_memory() -> None:
    assert runner.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert runner.is_oom(MemoryError())
    assert runner.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not runner.is_oom(RuntimeError("shape mismatch"))
    assert not runner.is_oom(ValueError("out of memory"))  # not a RuntimeError


class SimulatedFit:
    """A fit that runs out of memory above ``limit`` (what CUDA would raise); records what it
    was asked to fit with."""

    def __init__(self, limit: int, error: BaseException | None = None) -> None:
        self.limit, self.error = limit, error
        self.calls: list[tuple[int, int]] = []

    def __call__(self, cfg: DictConfig) -> float:
        batch, accumulate = int(cfg.data.batch_size), int(cfg.trainer.accumulate_grad_batches)
        self.calls.append((batch, accumulate))
        if self.error is not None:
            raise self.error
        if batch > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (batch {batch})")
        return 0.5


def test_step_down_keeps_the_effective_batch_and_records_it(composer: Any,
                                                            in_trial: optuna.Study) -> None:
    cfg = composer("data.batch_size=64", "oom.min_batch_size=8")
    fit = SimulatedFit(limit=16)
    assert runner.run_with_oom_stepdown(cfg, fit_fn=fit) == 0.5
    assert fit.calls == [(64, 1), (32, 2), (16, 4)]  # batch x accumulation stays 64
    assert cfg.data.batch_size == 64  # the job's config is left as it was
    attrs = in_trial.trials[0].user_attrs
    assert attrs["hpo:oom_batch_sizes"] == [64, 32]
    assert attrs["hpo:batch_size_used"] == 16


def test_step_down_stops_at_the_minimum(composer: Any, in_trial: optuna.Study) -> None:
    cfg = composer("data.batch_size=64", "oom.min_batch_size=32")
    fit = SimulatedFit(limit=16)
    with pytest.raises(runner.OutOfMemoryError) as info:
        runner.run_with_oom_stepdown(cfg, fit_fn=fit)
    assert str(info.value) == (
        "out of memory at data.batch_size=32 and oom.min_batch_size=32 stops the step-down: "
        "use a smaller model or more memory"
    )
    assert fit.calls == [(64, 1), (32, 2)]
    attrs = in_trial.trials[0].user_attrs
    assert attrs["hpo:oom_batch_sizes"] == [64, 32] and "hpo:batch_size_used" not in attrs


def test_other_errors_pass_through_at_once(composer: Any, outside_sweep: Path) -> None:
    fit = SimulatedFit(limit=16, error=ValueError("Invalid learning rate: -1.0"))
    with pytest.raises(ValueError, match="learning rate"):
        runner.run_with_oom_stepdown(composer("data.batch_size=64"), fit_fn=fit)
    assert fit.calls == [(64, 1)]


def test_batch_split(composer: Any, outside_sweep: Path) -> None:
    fit = SimulatedFit(limit=1000)
    runner.run_with_oom_stepdown(composer("data.batch_size=64", "batch_split=4"), fit_fn=fit)
    assert fit.calls == [(16, 4)]
    with pytest.raises(ConfigError, match=r"batch_split=3 does not divide data\.batch_size=64"):
        runner.run_with_oom_stepdown(composer("data.batch_size=64", "batch_split=3"),
                                     fit_fn=fit)


@pytest.mark.slow
def test_simulated_oom_in_a_real_fit(composer: Any, in_trial: optuna.Study) -> None:
    """``oom.simulate_above``: Lightning's own fit raises at train start above the limit."""
    value = runner.run(composer("data.batch_size=64", "oom.simulate_above=16",
                                "oom.min_batch_size=8"))
    assert isinstance(value, float) and 0.0 <= value <= 1.0
    t = in_trial.trials[0]
    assert t.user_attrs["hpo:oom_batch_sizes"] == [64, 32]
    assert t.user_attrs["hpo:batch_size_used"] == 16
    assert t.intermediate_values  # the fit that fitted reported


# --- output: quiet trials, epoch lines, one metrics.csv ----------------------------------------

BANNERS = ("GPU available", "TPU available", "litlogger", "LOCAL_RANK", "Restoring states",
           "`Trainer.fit` stopped")


def fit_and_capture(cfg: DictConfig, capsys: pytest.CaptureFixture[str],
                    caplog: pytest.LogCaptureFixture) -> tuple[str, float | list[float]]:
    with caplog.at_level(logging.INFO):
        value = runner.fit(cfg)
    out = capsys.readouterr()
    return out.out + out.err + "\n".join(r.getMessage() for r in caplog.records), value


@pytest.mark.slow
def test_a_trial_is_quiet(composer: Any, in_trial: optuna.Study,
                          capsys: pytest.CaptureFixture[str],
                          caplog: pytest.LogCaptureFixture) -> None:
    text, value = fit_and_capture(composer(), capsys, caplog)
    assert not [b for b in BANNERS if b in text], text
    assert "epoch 1/1" not in text and "objective:" not in text  # the driver shows progress
    assert math.isfinite(float(value))  # type: ignore[arg-type]
    # the Lightning loggers are as they were before the fit
    assert logging.getLogger("lightning.pytorch").level == logging.INFO


@pytest.mark.slow
def test_quiet_false_shows_lightning_output(composer: Any, outside_sweep: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    text, _ = fit_and_capture(composer("trainer.quiet=false"), capsys, caplog)
    assert "GPU available" in text and "litlogger" in text


@pytest.mark.slow
def test_a_single_run_logs_epochs_and_writes_one_metrics_csv(
    composer: Any, outside_sweep: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture
) -> None:
    text, value = fit_and_capture(composer("trainer.max_epochs=2"), capsys, caplog)
    assert not [b for b in BANNERS if b in text], text
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("train/loss=" in line and "val/acc=" in line for line in lines)
    assert f"objective: val/acc={value:.6g}" in text
    # hpo's metrics.csv is the only one: no Lightning CSV logger beside it
    assert sorted(p.relative_to(outside_sweep).as_posix()
                  for p in outside_sweep.rglob("*.csv")) == ["metrics.csv"]
    assert len((outside_sweep / "metrics.csv").read_text().splitlines()) == 3


def test_trainer_config_takes_quiet_out(composer: Any) -> None:
    node, quiet = runner.trainer_config(composer())
    assert quiet is True and "quiet" not in node
    assert runner.trainer_config(composer("trainer.quiet=false"))[1] is False
    with pytest.raises(ConfigError, match=r"trainer\.quiet='yes' is not a boolean"):
        runner.trainer_config(composer("trainer.quiet=yes"))


def test_quiet_lightning_restores_levels() -> None:
    lg = logging.getLogger("lightning.pytorch")
    before = lg.level
    with runner.quiet_lightning(True):
        assert lg.level == logging.WARNING
    assert lg.level == before


def test_fold_jobs_report_under_their_fold(composer: Any, outside_sweep: Path) -> None:
    callbacks = runner.build_callbacks(composer("cv.folds=3", "cv.fold=2"), outside_sweep,
                                       ["val/acc"])
    (reporter,) = [c for c in callbacks if type(c).__name__ == "OptunaReporter"]
    assert reporter.reporter.fold == 2
    plain = runner.build_callbacks(composer(), outside_sweep, ["val/acc"], in_sweep=False)
    assert [type(c).__name__ for c in plain][-1] == "EpochProgress"


def test_tasks_import_no_entry_point_and_the_command_task_no_torch() -> None:
    """Nothing under hpo.tasks imports hpo.train (the arrow points down the tree), and the
    command task's jobs do not pay for torch and Lightning."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import hpo.tasks.command\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning'))\n"
        "import hpo.tasks\n"
        "for m in pkgutil.walk_packages(hpo.tasks.__path__, 'hpo.tasks.'):\n"
        "    importlib.import_module(m.name)\n"
        "import hpo.diagram\n"
        "print(heavy, 'hpo.train' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    assert proc.stdout.strip() == "[] False", proc.stdout + proc.stderr
