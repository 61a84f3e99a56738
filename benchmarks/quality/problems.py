"""The problems of the search-quality benchmark: synthetic, tabulated, scikit-learn.

A :class:`Problem` is a search space (``hpo.space.ParamSpec`` with each parameter's default: the
"seed" configuration a sweep's baseline trial uses), a direction, and an ``evaluate`` function
that returns the objective plus what a real trial would have stored: intermediate values
(``trial.report`` per epoch), the ``curves`` / ``per_class`` user attrs of hpo's Lightning
reporter, the ``folds`` attr of a cross-validated trial.

Every problem knows its reference range, used to normalize regret (see :mod:`quality.stats`):

- synthetic: the exact optimum and the exact worst value of the box;
- tabulated: the best and worst value of the table (exact: samples are snapped onto it);
- scikit-learn: unknown; the runner uses the best and worst value observed in the run.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.space import ParamSpec

Params = Mapping[str, Any]


@dataclass
class Evaluation:
    """What one trial of a problem produced.

    Attributes:
        value: The objective.
        intermediate: ``(step, value)`` pairs to ``trial.report`` (the objective per epoch).
        attrs: Trial user attrs a real trial would carry (``curves``, ``per_class``, ``folds``).
        failed: Why the trial failed (then ``value`` is ignored and the trial is FAIL).
    """

    value: float
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None


@dataclass
class Problem:
    """One benchmark problem.

    Attributes:
        name: Short name (table rows, figure names, ``--problems``).
        kind: ``synthetic``, ``tabular`` or ``sklearn``.
        description: One line for the docs.
        space: The search space; each parameter's ``default`` is the seed configuration.
        direction: ``minimize`` or ``maximize``.
        objective: The objective's name as the prompts show it (``val/acc``, ``loss``).
        evaluate: Params -> :class:`Evaluation`.
        optimum: The best value reachable (None: unknown, taken from the observed values).
        worst: The worst value reachable (None: unknown, taken from the observed values).
        context: The task in a sentence, given to the LLM as ``agent.context``.
        fidelity: What one trial costs, in words, as the sweeper tells the LLM.
    """

    name: str
    kind: str
    description: str
    space: list[ParamSpec]
    direction: str
    objective: str
    evaluate: Callable[[Params], Evaluation]
    optimum: float | None
    worst: float | None
    context: str = ""
    fidelity: str | None = None
    _corners: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def defaults(self) -> dict[str, Any]:
        """The seed configuration (every parameter's default)."""
        return {p.name: p.default for p in self.space}

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b``."""
        return a < b if self.direction == "minimize" else a > b

    def corners(self) -> list[dict[str, Any]]:
        """The corners of the box (numeric bounds x categorical choices), worst value first.

        Every corner is evaluated once (then cached): a few seconds to minutes for the
        scikit-learn problems, which only the adversarial LLM pays.
        """
        if self._corners is not None:
            return self._corners
        axes: list[list[Any]] = []
        for p in self.space:
            d = p.distribution
            if isinstance(d, CategoricalDistribution):
                axes.append(list(d.choices))
            else:
                assert isinstance(d, FloatDistribution | IntDistribution)
                axes.append([d.low, d.high])
        names = [p.name for p in self.space]
        points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
        sign = 1.0 if self.direction == "minimize" else -1.0

        def badness(pt: dict[str, Any]) -> float:
            ev = self.evaluate(pt)
            return math.inf if ev.failed or not math.isfinite(ev.value) else sign * ev.value

        self._corners = sorted(points, key=badness, reverse=True)
        return self._corners


def _float(name: str, low: float, high: float, default: float, desc: str,
           log: bool = False) -> ParamSpec:
    return ParamSpec(name=name, distribution=FloatDistribution(low, high, log=log),
                     default=default, description=desc)


def _int(name: str, low: int, high: int, default: int, desc: str, log: bool = False) -> ParamSpec:
    return ParamSpec(name=name, distribution=IntDistribution(low, high, log=log),
                     default=default, description=desc)


def _cat(name: str, choices: Sequence[Any], default: Any, desc: str) -> ParamSpec:
    return ParamSpec(name=name, distribution=CategoricalDistribution(list(choices)),
                     default=default, description=desc)


# ------------------------------------------------------------------------------- synthetic
_SPHERE_CENTER = {"x1": 1.3, "x2": -2.1, "log10_lr": -3.4, "units": 11}
_SPHERE_KIND = {"a": 1.0, "b": 0.0, "c": 2.5}


def _sphere(p: Params) -> Evaluation:
    c = _SPHERE_CENTER
    value = (
        (float(p["x1"]) - c["x1"]) ** 2
        + (float(p["x2"]) - c["x2"]) ** 2
        + (math.log10(float(p["lr"])) - c["log10_lr"]) ** 2
        + ((int(p["units"]) - c["units"]) / 3.0) ** 2
        + _SPHERE_KIND[str(p["kind"])]
    )
    return Evaluation(value=value)


def sphere_mixed() -> Problem:
    """A shifted sphere over two floats, a log float, an int and a categorical (min 0)."""
    space = [
        _float("x1", -5.0, 5.0, 0.0, "A continuous coordinate."),
        _float("x2", -5.0, 5.0, 0.0, "A continuous coordinate."),
        _float("lr", 1e-5, 1.0, 1e-3, "A log-scaled rate.", log=True),
        _int("units", 1, 16, 4, "An integer size."),
        _cat("kind", ["a", "b", "c"], "a", "A categorical variant."),
    ]
    prob = Problem(
        name="sphere_mixed", kind="synthetic",
        description="shifted sphere: 2 floats, 1 log float, 1 int, 1 categorical (3 choices)",
        space=space, direction="minimize", objective="loss", evaluate=_sphere,
        optimum=0.0, worst=None,
        context="A synthetic test function to minimize; lower loss is better.",
    )
    # separable and convex in each coordinate: the worst value sits on a corner
    prob.worst = _sphere(prob.corners()[0]).value
    return prob


_BRANIN_KIND = {"a": 0.0, "b": 1.5, "c": 6.0}


def _branin_xy(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def _branin(p: Params) -> Evaluation:
    return Evaluation(value=_branin_xy(float(p["x1"]), float(p["x2"]))
                      + _BRANIN_KIND[str(p["kind"])])


def branin_mixed() -> Problem:
    """Branin over two floats plus a categorical offset (min 0.397887, three global minima)."""
    space = [
        _float("x1", -5.0, 10.0, 2.5, "A continuous coordinate."),
        _float("x2", 0.0, 15.0, 7.5, "A continuous coordinate."),
        _cat("kind", ["a", "b", "c"], "b", "A categorical variant."),
    ]
    # the maximum of Branin on the box lies on its boundary; a fine scan of it finds it
    xs = np.linspace(-5.0, 10.0, 3001)
    ys = np.linspace(0.0, 15.0, 3001)
    edge = [_branin_xy(x, y) for x in xs for y in (0.0, 15.0)]
    edge += [_branin_xy(x, y) for x in (-5.0, 10.0) for y in ys]
    return Problem(
        name="branin_mixed", kind="synthetic",
        description="Branin (2 floats) plus a categorical offset (3 choices)",
        space=space, direction="minimize", objective="loss", evaluate=_branin,
        optimum=0.39788735772973816, worst=max(edge) + max(_BRANIN_KIND.values()),
        context="A synthetic test function to minimize; lower loss is better.",
    )


# ------------------------------------------------------------------------------- tabulated
def digits_mlp() -> Problem:
    """hpo's own digits task (MLP, default search space), tabulated by make_digits_table.py."""
    from quality.tabular import DEFAULTS, DigitsTable

    table = DigitsTable()
    descriptions = {
        "optimizer.lr": "Learning rate; the most sensitive knob. Too high diverges, too low "
                        "underfits.",
        "optimizer.weight_decay": "L2 / decoupled weight decay; raise it when the model "
                                  "overfits.",
        "data.batch_size": "Mini-batch size; larger is faster per epoch but gives fewer "
                           "updates.",
        "model.label_smoothing": "Label smoothing of the cross-entropy; helps calibration and "
                                 "overfitting.",
        "optimizer": "Optimizer family (adamw, adam or sgd with Nesterov momentum).",
    }
    space = [
        _float("optimizer.lr", 1e-5, 1e-1, DEFAULTS["optimizer.lr"],
               descriptions["optimizer.lr"], log=True),
        _float("optimizer.weight_decay", 1e-6, 1e-1, DEFAULTS["optimizer.weight_decay"],
               descriptions["optimizer.weight_decay"], log=True),
        _cat("data.batch_size", [32, 64, 128], DEFAULTS["data.batch_size"],
             descriptions["data.batch_size"]),
        _float("model.label_smoothing", 0.0, 0.2, DEFAULTS["model.label_smoothing"],
               descriptions["model.label_smoothing"]),
        _cat("optimizer", ["adamw", "adam", "sgd"], DEFAULTS["optimizer"],
             descriptions["optimizer"]),
    ]

    def evaluate(p: Params) -> Evaluation:
        row = table.lookup(p)
        attrs: dict[str, Any] = {"curves": row.curves}
        if row.per_class:
            attrs["per_class"] = row.per_class
        if row.value is None:
            return Evaluation(value=math.nan, attrs=attrs, failed=row.error or "failed")
        return Evaluation(value=row.value, intermediate=list(enumerate(row.intermediate)),
                          attrs=attrs)

    return Problem(
        name="digits_mlp", kind="tabular",
        description="hpo's default task (MLP on digits, 20 epochs), 648 configurations of the "
                    "default search space trained and tabulated",
        space=space, direction="maximize", objective="val/acc", evaluate=evaluate,
        optimum=table.best_value(), worst=table.worst_value(),
        fidelity="up to 20 epochs per trial",
        context="An MLP classifier on 8x8 digit images (10 classes), up to 20 epochs per trial "
                "with early stopping; maximize validation accuracy.",
    )


# ---------------------------------------------------------------------------- scikit-learn
_FOLDS = 3


def _quiet_sklearn() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")  # ConvergenceWarning of short MLP runs, etc.


def _splits(x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(_FOLDS, shuffle=True, random_state=0).split(x, y))


def svc_digits() -> Problem:
    """SVC on scikit-learn's digits (standardized), 3-fold CV accuracy."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    folds = _splits(x, y)

    def evaluate(p: Params) -> Evaluation:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        _quiet_sklearn()
        scores = []
        for tr, va in folds:
            est = make_pipeline(StandardScaler(), SVC(
                C=float(p["C"]), gamma=float(p["gamma"]), kernel=str(p["kernel"]),
                degree=int(p["degree"]), max_iter=100_000))
            est.fit(x[tr], y[tr])
            scores.append(float(est.score(x[va], y[va])))
        return Evaluation(value=float(np.mean(scores)), attrs={"folds": scores})

    space = [
        _float("C", 1e-2, 1e4, 1.0, "Inverse regularization strength.", log=True),
        _float("gamma", 1e-5, 1e1, 1.0 / 64, "Kernel coefficient (rbf, poly, sigmoid).",
               log=True),
        _cat("kernel", ["rbf", "poly", "sigmoid"], "rbf", "Kernel type."),
        _int("degree", 2, 5, 3, "Degree of the poly kernel (ignored by the others)."),
    ]
    return Problem(
        name="svc_digits", kind="sklearn",
        description="SVC (C, gamma, kernel, degree) on digits, standardized, 3-fold CV accuracy",
        space=space, direction="maximize", objective="val/acc", evaluate=evaluate,
        optimum=None, worst=None,
        context="A support vector classifier on 8x8 digit images (10 classes, 1,797 samples), "
                "3-fold cross-validation; maximize accuracy.",
    )


def hgb_cancer() -> Problem:
    """HistGradientBoosting on breast cancer, 3-fold CV log loss, curves per 5 iterations."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    folds = _splits(x, y)

    def evaluate(p: Params) -> Evaluation:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.metrics import log_loss

        _quiet_sklearn()
        n_iter = int(p["max_iter"])
        checkpoints = sorted({*range(5, n_iter + 1, 5), n_iter})
        val_loss = np.zeros(len(checkpoints))
        val_acc = np.zeros(len(checkpoints))
        fold_losses = []
        for tr, va in folds:
            est = HistGradientBoostingClassifier(
                learning_rate=float(p["learning_rate"]), max_iter=n_iter,
                max_leaf_nodes=int(p["max_leaf_nodes"]),
                min_samples_leaf=int(p["min_samples_leaf"]),
                l2_regularization=float(p["l2_regularization"]),
                max_features=float(p["max_features"]),
                interaction_cst=None if p["interactions"] == "all" else str(p["interactions"]),
                early_stopping=False, random_state=0)
            est.fit(x[tr], y[tr])
            i = 0
            for it, proba in enumerate(est.staged_predict_proba(x[va]), start=1):
                if it == checkpoints[i]:
                    val_loss[i] += log_loss(y[va], proba, labels=[0, 1]) / _FOLDS
                    val_acc[i] += float(np.mean(proba.argmax(1) == y[va])) / _FOLDS
                    i += 1
                    if i == len(checkpoints):
                        break
            fold_losses.append(float(log_loss(y[va], est.predict_proba(x[va]), labels=[0, 1])))
        curves = {"epoch": checkpoints, "val/loss": [float(f"{v:.6g}") for v in val_loss],
                  "val/acc": [float(f"{v:.6g}") for v in val_acc]}
        return Evaluation(value=float(np.mean(fold_losses)),
                          intermediate=list(zip(checkpoints, val_loss.tolist(), strict=True)),
                          attrs={"curves": curves, "folds": fold_losses})

    space = [
        _float("learning_rate", 1e-3, 1.0, 0.1, "Shrinkage of each tree.", log=True),
        _int("max_iter", 5, 50, 50, "Boosting iterations.", log=True),
        _int("max_leaf_nodes", 2, 64, 31, "Leaves per tree.", log=True),
        _int("min_samples_leaf", 1, 100, 20, "Minimum samples per leaf.", log=True),
        _float("l2_regularization", 1e-6, 10.0, 1e-6, "L2 penalty on leaf values.", log=True),
        _float("max_features", 0.1, 1.0, 1.0, "Share of features tried per split."),
        # (not class_weight: sample weights make scikit-learn 1.9 bin the data 15x slower)
        _cat("interactions", ["all", "pairwise", "no_interactions"], "all",
             "Feature interactions a tree may use (interaction_cst)."),
    ]
    return Problem(
        name="hgb_cancer", kind="sklearn",
        description="HistGradientBoosting (7 params) on breast cancer, 3-fold CV log loss",
        space=space, direction="minimize", objective="val/loss", evaluate=evaluate,
        optimum=None, worst=None, fidelity="5 to 50 boosting iterations per fold",
        context="Gradient-boosted trees on a binary tabular task (569 samples, 30 features), "
                "3-fold cross-validation; minimize the validation log loss.",
    )


def mlp_wine() -> Problem:
    """MLPClassifier on wine (standardized), 20 epochs, 3-fold CV log loss, per-epoch curves."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    folds = _splits(x, y)
    epochs = 20
    classes = np.unique(y)

    def evaluate(p: Params) -> Evaluation:
        from sklearn.metrics import log_loss
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler

        _quiet_sklearn()
        val_loss = np.zeros(epochs)
        val_acc = np.zeros(epochs)
        train_loss = np.zeros(epochs)
        for tr, va in folds:
            scaler = StandardScaler().fit(x[tr])
            xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
            est = MLPClassifier(
                hidden_layer_sizes=(int(p["hidden_units"]),), activation=str(p["activation"]),
                alpha=float(p["alpha"]), learning_rate_init=float(p["learning_rate_init"]),
                batch_size=int(p["batch_size"]), random_state=0)
            for e in range(epochs):
                est.partial_fit(xtr, y[tr], classes=classes)
                proba = est.predict_proba(xva)
                val_loss[e] += log_loss(y[va], proba, labels=classes) / _FOLDS
                val_acc[e] += float(np.mean(proba.argmax(1) == y[va])) / _FOLDS
                train_loss[e] += float(est.loss_) / _FOLDS
        curves = {"epoch": list(range(epochs)),
                  "train/loss": [float(f"{v:.6g}") for v in train_loss],
                  "val/loss": [float(f"{v:.6g}") for v in val_loss],
                  "val/acc": [float(f"{v:.6g}") for v in val_acc]}
        return Evaluation(value=float(val_loss[-1]), intermediate=list(enumerate(val_loss)),
                          attrs={"curves": curves})

    space = [
        _int("hidden_units", 4, 256, 100, "Units of the hidden layer.", log=True),
        _float("alpha", 1e-6, 1.0, 1e-4, "L2 penalty.", log=True),
        _float("learning_rate_init", 1e-4, 1e-1, 1e-3, "Adam's learning rate.", log=True),
        _cat("batch_size", [16, 32, 64], 32, "Mini-batch size."),
        _cat("activation", ["relu", "tanh", "logistic"], "relu", "Hidden activation."),
    ]
    return Problem(
        name="mlp_wine", kind="sklearn",
        description="MLPClassifier (5 params) on wine, 20 epochs, 3-fold CV log loss",
        space=space, direction="minimize", objective="val/loss", evaluate=evaluate,
        optimum=None, worst=None, fidelity="20 epochs per fold",
        context="A one-hidden-layer MLP on a small tabular task (178 samples, 13 features, "
                "3 classes), 20 epochs, 3-fold cross-validation; minimize the validation log "
                "loss.",
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "sphere_mixed": sphere_mixed,
    "branin_mixed": branin_mixed,
    "digits_mlp": digits_mlp,
    "svc_digits": svc_digits,
    "hgb_cancer": hgb_cancer,
    "mlp_wine": mlp_wine,
}
