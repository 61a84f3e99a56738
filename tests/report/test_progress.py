"""hpo.progress.SweepProgress over a real SQLite study, driven the way the sweeper drives it."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

import hpo.progress
from hpo.progress import NO_RICH_ENV, SweepProgress

DISTS = {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)}
RATIONALE = ("Validation accuracy plateaus early while the training loss keeps falling: the "
             "model overfits, so raise weight decay\nand lower the learning rate a little.")


def _study(tmp_path: Path, *, directions: list[str] | None = None) -> optuna.Study:
    study = optuna.create_study(
        study_name="progress", storage=f"sqlite:///{tmp_path / 'hpo.db'}",
        directions=directions or ["maximize"],
    )
    # two trials of an earlier run: the counts and the best start from them
    for value in (0.9722, 0.95):
        study.add_trial(create_trial(params={"optimizer.lr": 1e-3}, distributions=DISTS,
                                     values=[value] * len(study.directions)))
    return study


def _run_trial(study: optuna.Study, progress: SweepProgress, *, attrs: dict[str, Any],
               values: list[float] | None = None,
               state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    """Ask, start, (report,) tell, finish: what the sweeper's driver does per trial."""
    trial = study.ask(DISTS)
    for key, value in attrs.items():  # what the sampler writes during ask
        trial.set_user_attr(key, value)
    progress.trial_started(trial.number, dict(trial.params))
    if state == TrialState.PRUNED:
        trial.report(0.4, step=2)
    study.tell(trial, values, state=state)
    frozen = study._storage.get_trial(trial._trial_id)
    progress.trial_finished(frozen)
    return frozen


def test_plain_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path)
    study.set_user_attr("hpo:tokens_in_total", 600)
    study.set_user_attr("hpo:cost_usd_total", 0.0011)
    progress = SweepProgress(study=study, n_trials=10, n_jobs=2, objective_names=["val/acc"],
                             enabled=False)
    assert progress._live is None
    assert progress.counts[TrialState.COMPLETE] == 2 and progress.best == [(0.9722, 0)]
    caplog.set_level(logging.INFO, logger="hpo.progress")

    _run_trial(study, progress, values=[0.96111], attrs={
        "hpo:source": "llm", "hpo:rationale": RATIONALE, "hpo:tokens_in": 612,
        "hpo:tokens_out": 200, "hpo:cost_usd": 0.0011})
    _run_trial(study, progress, values=[0.9801], attrs={"hpo:source": "fallback"})
    _run_trial(study, progress, state=TrialState.FAIL, attrs={
        "hpo:source": "repaired", "hpo:error": "CUDA out of memory\nTraceback ..."})
    _run_trial(study, progress, state=TrialState.PRUNED, attrs={"hpo:source": "baseline"})
    progress.close()

    lines = [r.getMessage() for r in caplog.records if r.name == "hpo.progress"]
    assert lines == [
        "trial 2 COMPLETE val/acc=0.9611 (best 0.9722 #0) source=llm 812 tok $0.0011 — "
        "Validation accuracy plateaus early while the training loss keeps falling: the m…",
        "trial 3 COMPLETE val/acc=0.9801 (best 0.9801 #3) source=fallback",
        "trial 4 FAIL (best 0.9801 #3) source=repaired error: CUDA out of memory Traceback ...",
        "trial 5 PRUNED at step 2 (best 0.9801 #3) source=baseline",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "hpo.progress")
    c = progress.counts
    assert (c[TrialState.COMPLETE], c[TrialState.FAIL], c[TrialState.PRUNED]) == (4, 1, 1)
    assert progress.running == set()


def test_events_read_no_full_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path)
    progress = SweepProgress(study=study, n_trials=5, objective_names=["val/acc"],
                             enabled=False)
    storage = study._storage

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a progress event read every trial of the study")

    caplog.set_level(logging.INFO, logger="hpo.progress")
    trial = study.ask(DISTS)
    study.tell(trial, 0.5)
    monkeypatch.setattr(storage, "get_all_trials", forbidden)
    progress.trial_started(trial.number, dict(trial.params))
    progress.trial_finished(storage.get_trial(trial._trial_id))
    assert [r.getMessage() for r in caplog.records if r.name == "hpo.progress"] == [
        "trial 2 COMPLETE val/acc=0.5 (best 0.9722 #0)"]


def test_multi_objective_and_render(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path, directions=["maximize", "minimize"])
    study.set_user_attr("hpo:tokens_in_total", 9000)
    study.set_user_attr("hpo:tokens_out_total", 3345)
    study.set_user_attr("hpo:cost_usd_total", 0.0123)
    study.set_user_attr("hpo:llm_calls_total", 5)
    study.set_user_attr("hpo:fallback_total", 2)
    progress = SweepProgress(study=study, n_trials=50, n_jobs=4,
                             objective_names=["val/acc", "params"], enabled=False)
    caplog.set_level(logging.INFO, logger="hpo.progress")
    _run_trial(study, progress, values=[0.99, 0.5], attrs={
        "hpo:source": "llm", "hpo:rationale": "Shrink the <b>model</b> [bold]now[/bold]."})
    assert caplog.records[-1].getMessage().startswith(
        "trial 2 COMPLETE val/acc=0.99 params=0.5 (best 0.99 #2 / 0.5 #2) source=llm")
    progress.running.add(7)
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(progress.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "hpo sweep progress" in text
    assert "3/50 finished · 3 done · 1 running (4 slots) · 0 pruned · 0 failed" in text
    assert "val/acc=0.99 (#2)  params=0.5 (#2)" in text
    assert "#2 llm — Shrink the <b>model</b> [bold]now[/bold]." in text  # no markup
    assert "5 calls · 12,345 tokens · $0.0123 · 2 fallback" in text
    # a study without an LLM shows neither a proposal source nor LLM totals
    (tmp_path / "plain").mkdir()
    plain = SweepProgress(study=_study(tmp_path / "plain"), n_trials=5, objective_names=["v"],
                          enabled=False)
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(plain.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "best    v=0.9722 (#0)" in text and "last" not in text and "LLM" not in text


def test_objective_names_must_match(tmp_path: Path) -> None:
    study = _study(tmp_path)
    with pytest.raises(ValueError, match="give one name per objective"):
        SweepProgress(study=study, n_trials=3, objective_names=["a", "b"])


def test_live_panel_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    study = _study(tmp_path)
    monkeypatch.setattr(hpo.progress, "_is_terminal", lambda: True)
    monkeypatch.setenv(NO_RICH_ENV, "1")
    assert SweepProgress(study=study, n_trials=3, objective_names=["v"])._live is None
    assert SweepProgress(study=study, n_trials=3, objective_names=["v"],
                         enabled=False)._live is None
    monkeypatch.delenv(NO_RICH_ENV)
    caplog.set_level(logging.INFO, logger="hpo.progress")
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger().addHandler(handler)
    try:
        progress = SweepProgress(study=study, n_trials=3, objective_names=["v"])
        assert progress._live is not None
        assert handler.stream is not progress._log_redirect.swapped[0][1]  # type: ignore[union-attr]
        _run_trial(study, progress, values=[0.1], attrs={"hpo:source": "llm",
                                                         "hpo:rationale": "go"})
        assert progress.last_source == "llm" and progress.last_rationale == "go"
        progress.close()
        progress.close()  # idempotent
        assert handler.stream is sys.stdout  # restored
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [r for r in caplog.records if r.name == "hpo.progress"]  # the panel, no lines
