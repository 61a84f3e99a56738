"""Sampler groups like hydra-optuna-sweeper's (issue 16.6): hydra/sweeper/sampler=llm|tpe|
random|cmaes|gp|grid|nsgaii|qmc, and a grid built from the searched params. CLI runs use the
quadratic test app, an independent Hydra app that only selects hydra/sweeper=hpo."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import APPS, clean_env, run_cli
from hydra_plugins.hpo_sweeper._study import grid_values
from hydra_plugins.hpo_sweeper.config import SAMPLER_GROUP

QUADRATIC = str(APPS / "quadratic" / "app.py")


@pytest.mark.parametrize(("name", "cls"), [
    ("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
    ("cmaes", optuna.samplers.CmaEsSampler), ("gp", optuna.samplers.GPSampler),
    ("nsgaii", optuna.samplers.NSGAIISampler), ("qmc", optuna.samplers.QMCSampler),
])
def test_each_group_option_builds_its_sampler(name: str, cls: type) -> None:
    node = OmegaConf.create({"hydra": {"sweeper": {"seed": 3, "sampler": SAMPLER_GROUP[name]}}})
    assert isinstance(instantiate(node.hydra.sweeper.sampler), cls)


def test_grid_is_partial_until_the_sweeper_knows_the_params() -> None:
    node = OmegaConf.create({"hydra": {"sweeper": {"seed": 3, "sampler": SAMPLER_GROUP["grid"]}}})
    built = instantiate(node.hydra.sweeper.sampler)
    assert isinstance(built, functools.partial) and built.func is optuna.samplers.GridSampler
    assert grid_values(CategoricalDistribution(["a", 1])) == ["a", 1]
    assert grid_values(IntDistribution(1, 7, step=3)) == [1, 4, 7]
    assert grid_values(FloatDistribution(0.0, 1.0, step=0.25)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert grid_values(FloatDistribution(0.0, 1.0)) is None


def run(tmp: Path, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_cli([QUADRATIC, "-m", f"hydra.sweeper.storage=sqlite:///{tmp / 's.db'}",
                    *extra], cwd=tmp, env=clean_env(HPO_TEST_SWEEP_DIR=str(tmp / "multirun")),
                   timeout=180, check=check)


def test_a_grid_from_the_params_visits_every_point_once(tmp_path: Path) -> None:
    run(tmp_path, "hydra/sweeper/sampler=grid", "x=range(0, 2)", "kind=choice(a, b)",
        "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2")
    trials = optuna.load_study(study_name="quadratic",
                               storage=f"sqlite:///{tmp_path / 's.db'}").trials
    points = sorted((t.params["x"], t.params["kind"]) for t in trials)
    assert points == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]


def test_a_grid_over_a_float_interval_without_a_step_is_one_line(tmp_path: Path) -> None:
    proc = run(tmp_path, "hydra/sweeper/sampler=grid", "x=interval(-5, 5)", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = [ln for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith("Set the environment")][-1]
    assert line.startswith("hydra/sweeper/sampler=grid needs the values of 'x'")
    assert "x=range(-5.0, 5.0, step=...)" in line
    assert not (tmp_path / "s.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{tmp_path / 's.db'}")
