"""hpo.naming: default study names from the config name and a hash of the search space."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import hpo.naming
from hpo.naming import default_study_name, space_hash

SPACE = {
    "optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True),
    "model": CategoricalDistribution(["mlp", "cnn"]),
    "data.batch_size": IntDistribution(16, 128, step=16),
}


def test_same_space_same_name_in_any_order() -> None:
    reordered = dict(reversed(list(SPACE.items())))
    assert default_study_name("train", SPACE) == default_study_name("train", reordered)
    assert default_study_name("train", SPACE).startswith("train-")
    assert len(space_hash(SPACE)) == 6


@pytest.mark.parametrize("change", [
    {"optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True)},  # a bound
    {"optimizer.lr": FloatDistribution(1e-5, 1e-1)},  # log scale off
    {"model": CategoricalDistribution(["cnn", "mlp"])},  # choice order: Optuna's space differs
    {"data.batch_size": IntDistribution(16, 112, step=32)},  # step
    {"optimizer.weight_decay": FloatDistribution(0.0, 0.1)},  # one more parameter
])
def test_a_different_space_gets_another_name(change: dict[str, object]) -> None:
    other = {**SPACE, **change}
    assert default_study_name("train", other) != default_study_name("train", SPACE)


def test_the_name_is_stable_across_processes() -> None:
    code = ("from optuna.distributions import FloatDistribution as F;"
            "from hpo.naming import default_study_name as d;"
            "print(d('train', {'x': F(0.0, 1.0)}))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(
                               sys.path)}).stdout.strip() for seed in ("1", "2")}
    assert len(runs) == 1
    assert runs == {default_study_name("train", {"x": FloatDistribution(0.0, 1.0)})}


@pytest.mark.parametrize(("config_name", "stem"), [
    ("forecast", "forecast"), ("my app/conf", "my_app_conf"), (None, "study"), ("", "study"),
])
def test_config_names_become_safe_stems(config_name: str | None, stem: str) -> None:
    assert default_study_name(config_name, SPACE) == f"{stem}-{space_hash(SPACE)}"


def test_bad_hash_length() -> None:
    with pytest.raises(ValueError, match=r"use 1\.\.64"):
        space_hash(SPACE, chars=0)


def test_docstring_example() -> None:
    assert doctest.testmod(hpo.naming).failed == 0
