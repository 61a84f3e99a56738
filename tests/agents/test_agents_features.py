"""Learning-curve features and the study-level rules that let a chain skip its analyst."""

from __future__ import annotations

import math

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.agents.features import (
    conclusive_verdict,
    curve_features,
    fold_summary,
    is_lower_better,
    per_class_summary,
    trial_features,
)

NAN = float("nan")

# name, values, direction, curves, expected raised flags (exactly these among the five)
CASES = [
    (
        "healthy",
        [1.0, 0.7, 0.5, 0.4, 0.35, 0.31, 0.29, 0.27, 0.26, 0.25, 0.24, 0.235],
        "minimize",
        {"train/loss": [1.0, 0.7, 0.5, 0.4, 0.34, 0.3], "val/loss": [1.0, 0.72, 0.52, 0.43,
                                                                      0.37, 0.33]},
        set(),
    ),
    (
        "overfitting",
        [0.5, 0.6, 0.7, 0.72, 0.71, 0.70],
        "maximize",
        {
            "train/loss": [1.0, 0.6, 0.3, 0.15, 0.08, 0.04],
            "val/loss": [1.0, 0.7, 0.55, 0.6, 0.7, 0.85],
            "train/acc": [0.5, 0.7, 0.9, 0.96, 0.99, 1.0],
            "val/acc": [0.5, 0.6, 0.7, 0.72, 0.71, 0.70],
        },
        {"overfit"},
    ),
    (
        "diverging_nan",
        [2.3, 1.9, 1.7, NAN],
        "minimize",
        None,
        {"diverged"},
    ),
    (
        "diverging_rising",
        [2.3, 1.9, 1.7, 2.5, 6.0, 40.0],
        "minimize",
        None,
        {"diverged"},
    ),
    (
        "diverging_train_loss_inf",
        [0.3, 0.35, 0.1],
        "maximize",
        {"train/loss": [2.3, 1.0, float("inf")]},
        {"diverged"},
    ),
    (
        "plateau",
        [1.0, 0.6, 0.45, 0.41, 0.40, 0.40, 0.401, 0.40, 0.402, 0.40, 0.40],
        "minimize",
        None,
        {"plateau"},
    ),
    (
        "underfit_low_train_acc",
        [0.20, 0.22, 0.25, 0.27, 0.30],
        "maximize",
        {"train/acc": [0.2, 0.23, 0.26, 0.28, 0.31], "val/acc": [0.2, 0.22, 0.25, 0.27, 0.30]},
        {"underfit"},
    ),
    (
        "underfit_flat_train_loss",
        [2.30, 2.29, 2.28, 2.27],
        "minimize",
        {"train/loss": [2.30, 2.29, 2.28, 2.26], "val/loss": [2.31, 2.30, 2.29, 2.27]},
        {"underfit"},
    ),
    (
        "noisy",
        [0.50, 0.70, 0.52, 0.74, 0.56, 0.78, 0.60, 0.82, 0.64, 0.86],
        "maximize",
        None,
        {"noisy"},
    ),
]

FLAGS = ("overfit", "diverged", "plateau", "underfit", "noisy")


@pytest.mark.parametrize(
    ("name", "values", "direction", "curves", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_curve_features_table(name, values, direction, curves, expected):
    f = curve_features(values, direction=direction, curves=curves)
    raised = {flag for flag in FLAGS if getattr(f, flag)}
    assert raised == expected, (name, f)
    assert f.n_steps == len(values)
    for short in expected:
        assert any(s.startswith(short) for s in f.flags())


def test_curve_features_details():
    f = curve_features({0: 1.0, 1: 0.5, 2: 0.6, 3: 0.7}, direction="minimize")
    assert (f.best, f.best_step, f.last, f.steps_since_best) == (0.5, 1, 0.7, 2)
    f = curve_features(
        [0.5, 0.6, 0.7, 0.72, 0.71, 0.70],
        direction="maximize",
        curves=CASES[1][3],
    )
    assert f.overfit_metric == "loss"
    assert f.overfit_gap == pytest.approx(0.85 - 0.04)
    assert curve_features([]).flags() == []
    with pytest.raises(ValueError, match="direction 'up' is invalid"):
        curve_features([1.0], direction="up")


def test_still_improving_is_not_a_plateau():
    values = [1.0 - 0.08 * i for i in range(12)]
    f = curve_features(values, direction="minimize")
    assert f.still_improving and not f.plateau and not f.noisy


def test_metric_direction_names():
    assert is_lower_better("val/loss") and is_lower_better("train/mse")
    assert not is_lower_better("val/acc") and not is_lower_better("f1")


def test_per_class_and_folds():
    pcs = per_class_summary({"f1": {"cat": 0.51, "dog": 0.9, "ship": 0.7, "car": 0.95},
                             "bad": "not a table"}, k=2)
    assert len(pcs) == 1
    assert pcs[0].weakest == [("cat", 0.51), ("ship", 0.7)]
    assert pcs[0].n_classes == 4 and pcs[0].min == 0.51
    assert per_class_summary(None) == []
    fs = fold_summary([0.9, 0.8, 1.0, "x", NAN])
    assert fs is not None and fs.n == 3 and fs.mean == pytest.approx(0.9)
    assert fs.std == pytest.approx(math.sqrt(2 / 3 * 0.01))
    assert fold_summary("0.9") is None and fold_summary([]) is None


_DIST = {"x": FloatDistribution(0.0, 1.0)}


def _trial(number, state, value=None, iv=None, attrs=None) -> FrozenTrial:
    t = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions=_DIST,
        intermediate_values=iv or {},
        user_attrs=attrs or {},
    )
    t.number = number
    return t


GOOD_IV = {i: 1.0 - 0.05 * i for i in range(5)}


def test_trial_features_reads_curves_attr():
    t = _trial(0, TrialState.COMPLETE, 0.5, GOOD_IV, {"curves": {"train/loss": [1.0, NAN]}})
    assert trial_features(t, "minimize").divergence == "non_finite"


@pytest.mark.parametrize(
    ("trials", "direction", "expected"),
    [
        ([], "minimize", None),
        ([_trial(0, TrialState.RUNNING)], "minimize", None),
        # one finished trial, diverged
        ([_trial(0, TrialState.FAIL, iv={0: 2.0, 1: NAN})], "minimize", "clear_divergence"),
        # two of the last three diverged, the latest among them
        (
            [
                _trial(0, TrialState.COMPLETE, 0.5, GOOD_IV),
                _trial(1, TrialState.FAIL, iv={0: 2.0, 1: NAN}),
                _trial(2, TrialState.PRUNED, iv={0: 2.0, 1: 3.0, 2: 9.0}),
            ],
            "minimize",
            "clear_divergence",
        ),
        # only one of three diverged: no verdict on divergence
        (
            [
                _trial(0, TrialState.COMPLETE, 0.6, GOOD_IV),
                _trial(1, TrialState.COMPLETE, 0.61, GOOD_IV),
                _trial(2, TrialState.FAIL, iv={0: 2.0, 1: NAN}),
            ],
            "minimize",
            None,
        ),
        # a clear new best with healthy curves
        (
            [
                _trial(0, TrialState.COMPLETE, 0.70, GOOD_IV),
                _trial(1, TrialState.COMPLETE, 0.80, GOOD_IV),
                _trial(2, TrialState.COMPLETE, 0.50, GOOD_IV),
            ],
            "minimize",
            "clear_improvement",
        ),
        # maximize: a higher value is the improvement
        (
            [_trial(0, TrialState.COMPLETE, 0.70), _trial(1, TrialState.COMPLETE, 0.90)],
            "maximize",
            "clear_improvement",
        ),
        # a marginal new best (below 1 %) is not clear
        (
            [_trial(0, TrialState.COMPLETE, 0.700), _trial(1, TrialState.COMPLETE, 0.699)],
            "minimize",
            None,
        ),
        # a new best that overfits is not clear
        (
            [
                _trial(0, TrialState.COMPLETE, 0.70),
                _trial(
                    1,
                    TrialState.COMPLETE,
                    0.50,
                    attrs={"curves": {"train/loss": [1.0, 0.3, 0.05, 0.01],
                                      "val/loss": [1.0, 0.5, 0.6, 0.9]}},
                ),
            ],
            "minimize",
            None,
        ),
        # latest is pruned: no improvement verdict
        (
            [_trial(0, TrialState.COMPLETE, 0.70), _trial(1, TrialState.PRUNED, iv=GOOD_IV)],
            "minimize",
            None,
        ),
        # multi-objective: only divergence is judged
        (
            [_trial(0, TrialState.COMPLETE, 0.70), _trial(1, TrialState.COMPLETE, 0.10)],
            ["minimize", "maximize"],
            None,
        ),
    ],
)
def test_conclusive_verdict(trials, direction, expected):
    assert conclusive_verdict(trials, direction) == expected


def test_conclusive_verdict_rejects_bad_direction():
    with pytest.raises(ValueError, match="'lower' is invalid"):
        conclusive_verdict([], "lower")
