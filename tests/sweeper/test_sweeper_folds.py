"""k-fold CV on the sweeper side (issue 15.5): a trial's per-class scores become their mean and
std across folds, every fold's per-class scores and curves are kept, and every fold's artifacts
are uploaded. A real hpo.train sweep with trainer=debug and 2 folds."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta

from conftest import clean_env, run_cli
from hpo import attrs
from hpo.trial_context import per_class_across_folds


@pytest.mark.slow
def test_two_folds_give_per_class_mean_and_std_and_keep_every_fold(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    run_cli(["-m", "hpo.train", "-m", "trainer=debug", "agent=none", "cv.folds=2",
             f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "hydra.sweeper.study_name=folds", "hydra.sweeper.n_trials=1",
             "hydra.sweeper.seed=3"], cwd=tmp_path, env=clean_env(), timeout=600)
    study = optuna.load_study(study_name="folds", storage=f"sqlite:///{db}")
    (t,) = study.trials
    assert t.state.name == "COMPLETE"
    per_fold = [t.user_attrs[f"per_class_fold_{i}"] for i in range(2)]
    assert all(sorted(p) == ["acc", "f1"] for p in per_fold)
    assert all(t.user_attrs[f"curves_fold_{i}"]["epoch"] for i in range(2))
    summary = per_class_across_folds(per_fold)
    assert t.user_attrs[attrs.PER_CLASS] == summary["mean"]
    assert t.user_attrs[attrs.PER_CLASS_STD] == summary["std"]
    names = {m.filename for m in get_all_artifact_meta(t, storage=study._storage)}
    for i in range(2):
        produced = {p.name for p in (tmp_path / "sweep" / "trial_0" / f"fold_{i}").iterdir()}
        expected = {f"fold_{i}_{n}" for n in ("metrics.csv", "curves.png", "summary.json")
                    if n in produced}
        assert expected and expected <= names, (names, produced)
