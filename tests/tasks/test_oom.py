"""Fault matrix, memory (issue 5 item 5): out of memory inside a trial.

``oom.simulate_above=16`` makes every fit with ``data.batch_size > 16`` raise CUDA's
``OutOfMemoryError`` at train start (fault injection in hpo.train). One sweep of
``python -m hpo.train -m`` enumerates, with Optuna's BruteForceSampler, the four combinations
of ``oom.min_batch_size`` in {8, 32} and ``optimizer.lr`` in {0.001, -1.0} at
``data.batch_size=64``:

- min 8, lr 0.001: 64 and 32 run out of memory, 16 fits: the trial completes with
  ``hpo:oom_batch_sizes == [64, 32]`` and ``hpo:batch_size_used == 16``;
- min 32: 64 and 32 run out of memory and 16 is below the minimum: the trial fails with the
  one-line OOM error;
- lr -1.0: any other exception (torch rejects the learning rate) fails the trial at once, with
  no step-down.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from conftest import clean_env, run_cli
from hpo.attrs import trial_output_dir

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oom_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[FrozenTrial], str]:
    root = tmp_path_factory.mktemp("oom")
    db = root / "s.db"
    proc = run_cli(
        ["-m", "hpo.train", "-m", "agent=none", "trainer=debug", "search_space=none",
         "data.batch_size=64", "oom.simulate_above=16", "oom.min_batch_size=8,32",
         "optimizer.lr=0.001,-1.0", "hydra.sweeper.n_trials=4",
         "hydra.sweeper.max_failure_rate=1.0",
         "hydra.sweeper.sampler={_target_: optuna.samplers.BruteForceSampler, seed: 0}",
         f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={root / 'sweep'}"],
        cwd=root, env=clean_env(), timeout=600,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    trials = study.trials
    for t in trials:  # the output dir as hpo.attrs derives it, for the tests below
        out = trial_output_dir(t.number, t.user_attrs, study.user_attrs)
        t.user_attrs["test:output_dir"] = out
    return trials, proc.stdout + proc.stderr


def pick(trials: list[FrozenTrial], min_bs: int, lr: float) -> FrozenTrial:
    (t,) = [t for t in trials
            if t.params["oom.min_batch_size"] == min_bs and t.params["optimizer.lr"] == lr]
    return t


def test_all_four_combinations_ran(oom_sweep: tuple[list[FrozenTrial], str]) -> None:
    trials, _ = oom_sweep
    combos = {(t.params["oom.min_batch_size"], t.params["optimizer.lr"]) for t in trials}
    assert combos == {(8, 0.001), (8, -1.0), (32, 0.001), (32, -1.0)}
    assert len(trials) == 4


def test_oom_steps_down_and_the_trial_completes(oom_sweep: tuple[list[FrozenTrial], str]) -> None:
    t = pick(oom_sweep[0], 8, 0.001)
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("hpo:error")
    assert t.user_attrs["hpo:oom_batch_sizes"] == [64, 32]
    assert t.user_attrs["hpo:batch_size_used"] == 16
    assert t.value is not None and 0.0 <= t.value <= 1.0
    # each step down is logged
    log = (Path(t.user_attrs["test:output_dir"]) / "train.log").read_text()
    assert "out of memory at data.batch_size=64: retrying with 32" in log
    assert "out of memory at data.batch_size=32: retrying with 16" in log


def test_oom_below_the_minimum_fails_with_one_line(
    oom_sweep: tuple[list[FrozenTrial], str]
) -> None:
    trials, output = oom_sweep
    t = pick(trials, 32, 0.001)
    assert t.state == TrialState.FAIL
    error = t.user_attrs["hpo:error"]
    assert error == (
        "OutOfMemoryError: out of memory at data.batch_size=32 and oom.min_batch_size=32 "
        "stops the step-down: use a smaller model or more memory"
    )
    assert t.user_attrs["hpo:oom_batch_sizes"] == [64, 32]
    assert "hpo:batch_size_used" not in t.user_attrs
    assert not t.user_attrs.get("hpo:retried")  # a trial's own failure is not retried
    assert error in output


@pytest.mark.parametrize("min_bs", [8, 32])
def test_other_exceptions_fail_without_step_down(
    oom_sweep: tuple[list[FrozenTrial], str], min_bs: int
) -> None:
    t = pick(oom_sweep[0], min_bs, -1.0)
    assert t.state == TrialState.FAIL
    error = t.user_attrs["hpo:error"]
    assert error.startswith("ValueError:") and "-1.0" in error, error
    assert "hpo:oom_batch_sizes" not in t.user_attrs
    assert "\n" not in error
