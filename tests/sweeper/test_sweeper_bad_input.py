"""Bad inputs on the sweeper's side (issue 15.4): a parameter given twice, a default outside
its range, an escaped interpolation as a choice, data that cannot be had."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from test_sweeper_plan import app_config, plan_of

from conftest import APPS, clean_env, run_cli
from hpo.errors import SearchSpaceError

QUADRATIC = str(APPS / "quadratic" / "app.py")


def test_a_parameter_given_twice_is_one_line_naming_it() -> None:
    with pytest.raises(SearchSpaceError) as info:
        plan_of("optimizer.lr=interval(0, 1)", "optimizer.lr=interval(0, 2)")
    assert str(info.value) == (
        "optimizer.lr is given twice on the command line ('optimizer.lr=interval(0, 1)' and "
        "'optimizer.lr=interval(0, 2)'): keep one")


def test_a_default_outside_its_range_is_clamped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = app_config()
    config.optimizer.lr = 5.0
    with caplog.at_level(logging.WARNING):
        plan = plan_of("optimizer.lr=interval(0, 1)", config=config)
    (spec,) = plan.space
    assert spec.default == 1.0 and spec.configured_default == 5.0  # the baseline says so
    (line,) = [r.getMessage() for r in caplog.records if "outside" in r.getMessage()]
    assert line.startswith("the default of optimizer.lr (5.0) is outside FloatDistribution(")
    assert "the baseline trial uses 1.0 (clamped)" in line


def test_an_escaped_interpolation_stays_literal_in_the_job(tmp_path: Path) -> None:
    run_cli([QUADRATIC, "-m", f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
             "x=interval(-5, 5)", r"kind=choice('\${oc.env:HOME}')", "hydra.sweeper.n_trials=1"],
            cwd=tmp_path, env=clean_env(HPO_TEST_SWEEP_DIR=str(tmp_path / "multirun")))
    (t,) = optuna.load_study(study_name="quadratic",
                             storage=f"sqlite:///{tmp_path / 's.db'}").trials
    assert t.params["kind"] == r"\${oc.env:HOME}"  # as Hydra parses the escaped choice
    job = OmegaConf.load(tmp_path / "multirun" / "quadratic" / "0" / ".hydra" / "config.yaml")
    assert job.kind == "${oc.env:HOME}"  # the literal, not the home directory


@pytest.mark.slow
def test_data_that_cannot_be_had_stops_after_the_first_trial(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hpo.train", "-m", "trainer=debug", "agent=none", "data=cifar10",
                    f"data.data_dir={tmp_path / 'nodata'}", "data.download=false",
                    "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "hydra.sweeper.n_trials=4",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.study_name=d"],
                   cwd=tmp_path, env=clean_env(), timeout=600, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = [ln for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith("Set the environment")][-1]
    assert line.startswith("dataset 'cifar10' is not in "), proc.stderr[-2000:]
    assert "use data=digits" in line and "no other params can fix that: stopping" in line
    trials = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 's.db'}").trials
    assert len(trials) == 1  # not one failed trial per budget slot
