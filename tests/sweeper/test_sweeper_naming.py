"""Study names (issue 16.3): with no ``hydra.sweeper.study_name`` a sweep's study is the config
name plus a hash of its search space, shown at start and used by the dry run; a clash with a
named study is one line naming the exact override. Real CLI runs of the quadratic test app."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from conftest import APPS, clean_env, run_cli
from hpo.naming import default_study_name

QUADRATIC = str(APPS / "quadratic" / "app.py")


def sweep(tmp: Path, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli([QUADRATIC, "-m", f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}",
                    *extra], cwd=tmp, env=clean_env(HPO_TEST_SWEEP_DIR=str(tmp / "multirun")),
                   timeout=180, check=check)


def test_an_unnamed_study_takes_the_config_name_and_a_hash_of_its_space(tmp_path: Path) -> None:
    name = default_study_name("config", {"x": FloatDistribution(-5, 5)})
    args = ["hydra.sweeper.study_name=null", "x=interval(-5, 5)", "hydra.sweeper.n_trials=2"]
    dry = sweep(tmp_path, *args, "hydra.sweeper.dry_run=true")
    assert f"DRY RUN: study {name!r} holds 0 trial(s)" in dry.stdout
    out = sweep(tmp_path, *args)
    assert f"study {name!r} (no hydra.sweeper.study_name" in out.stdout + out.stderr
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    # the sweep dir interpolates the name, in the driver and in every job
    runs = tmp_path / "multirun" / name
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["0", "1"]
    assert (runs / "optimization_results.yaml").exists()
    # the same command resumes its own study; another space gets another one
    sweep(tmp_path, *args[:2], "hydra.sweeper.n_trials=3")
    assert len(study.trials) == 3
    sweep(tmp_path, "hydra.sweeper.study_name=null", "x=interval(-3, 3)",
          "hydra.sweeper.n_trials=1")
    names = set(optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}"))
    assert names == {name, default_study_name("config", {"x": FloatDistribution(-3, 3)})}


def test_a_clash_with_a_named_study_names_the_override_to_use(tmp_path: Path) -> None:
    sweep(tmp_path, "x=interval(-5, 5)", "hydra.sweeper.n_trials=1")  # study 'quadratic'
    proc = sweep(tmp_path, "x=interval(-3, 3)", "hydra.sweeper.n_trials=1", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    other = default_study_name("config", {"x": FloatDistribution(-3, 3)})
    line = [ln for ln in proc.stderr.splitlines() if ln.strip()
            and not ln.startswith("Set the environment")][-1]
    assert line.startswith("parameter 'x' is FloatDistribution(") and "'quadratic'" in line
    assert f"rerun with hydra.sweeper.study_name={other} for a study of its own" in line


def test_the_dry_run_checks_the_same_clash(tmp_path: Path) -> None:
    sweep(tmp_path, "x=interval(-5, 5)", "hydra.sweeper.n_trials=1")
    proc = sweep(tmp_path, "x=interval(-3, 3)", "hydra.sweeper.dry_run=true", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    other = default_study_name("config", {"x": FloatDistribution(-3, 3)})
    assert f"rerun with hydra.sweeper.study_name={other}" in proc.stderr
    assert "DRY RUN" not in proc.stdout
