"""Deterministic learning-curve features of a trial, and study-level rules.

Everything here is plain arithmetic on what a trial stored: its intermediate values (the
objective reported per step) and optional user attrs written by the training callbacks:

- ``curves``: ``{"train/loss": [...], "val/loss": [...], "train/acc": [...], ...}`` per epoch;
- ``per_class``: ``{"f1": {"cat": 0.71, "dog": 0.64, ...}}``;
- ``folds``: ``[0.91, 0.88, ...]`` (one objective value per cross-validation fold).

The features feed the rendered history (one short flag list per trial) and
:func:`conclusive_verdict`, which lets a chain skip the analyst's LLM call when the situation is
obvious.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CurveFeatures",
    "FoldSummary",
    "PerClassSummary",
    "Verdict",
    "conclusive_verdict",
    "curve_features",
    "fold_summary",
    "is_lower_better",
    "per_class_summary",
    "trial_features",
]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

Verdict = Literal["clear_improvement", "clear_divergence"]

# Metric names whose lower values are better; anything else (acc, f1, auc, r2, ...) is a score.
_LOWER_BETTER = ("loss", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "cost", "time")


def is_lower_better(metric: str) -> bool:
    """Whether ``metric`` (e.g. ``"val/loss"``, ``"val/acc"``) is a loss-like name."""
    name = metric.lower().rsplit("/", 1)[-1]
    return any(tok in name for tok in _LOWER_BETTER)


@dataclass(frozen=True)
class CurveFeatures:
    """What a trial's learning curves say, in a few numbers and flags.

    Attributes:
        n_steps: Number of intermediate values of the objective.
        last: Last objective intermediate value (None when there is none).
        best: Best objective intermediate value in the study's direction.
        best_step: Step at which ``best`` was reached.
        steps_since_best: Steps reported after the best one.
        diverged: Non-finite values, or the curve ended clearly worse than it started.
        divergence: ``"non_finite"`` or ``"rising"`` when diverged.
        plateau: No improvement over the last ``plateau_window`` steps.
        still_improving: The last window still improved clearly (more steps may help).
        underfit: Training score is low, or the training loss barely moved.
        overfit: Validation got worse while training improved, or a large generalization gap.
        overfit_gap: ``val - train`` for losses, ``train - val`` for scores, at the last epoch.
        overfit_metric: The metric pair (``"loss"``, ``"acc"``, ...) the gap was measured on.
        noise: Standard deviation of step-to-step differences of the objective curve.
        noisy: The curve zig-zags more than it trends.
    """

    n_steps: int = 0
    last: float | None = None
    best: float | None = None
    best_step: int | None = None
    steps_since_best: int | None = None
    diverged: bool = False
    divergence: str | None = None
    plateau: bool = False
    still_improving: bool = False
    underfit: bool = False
    overfit: bool = False
    overfit_gap: float | None = None
    overfit_metric: str | None = None
    noise: float | None = None
    noisy: bool = False

    def flags(self) -> list[str]:
        """Short names of the raised flags, in a fixed order."""
        out: list[str] = []
        if self.diverged:
            out.append(f"diverged({self.divergence})")
        if self.overfit:
            gap = "" if self.overfit_gap is None else f" gap={self.overfit_gap:.3g}"
            out.append(f"overfit({self.overfit_metric}{gap})")
        if self.underfit:
            out.append("underfit")
        if self.plateau:
            out.append(f"plateau({self.steps_since_best} steps)")
        if self.still_improving:
            out.append("still_improving")
        if self.noisy:
            out.append("noisy")
        return out


@dataclass(frozen=True)
class PerClassSummary:
    """Per-class metric summary: mean, minimum and the weakest classes."""

    metric: str
    n_classes: int
    mean: float
    min: float
    weakest: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class FoldSummary:
    """Cross-validation folds of one trial."""

    n: int
    mean: float
    std: float
    min: float
    max: float


def _finite(xs: Sequence[Any]) -> list[float]:
    out: list[float] = []
    for x in xs:
        try:
            v = float(x)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _has_non_finite(xs: Sequence[Any]) -> bool:
    for x in xs:
        try:
            if not math.isfinite(float(x)):
                return True
        except (TypeError, ValueError):
            continue
    return False


def _rising(curve: Sequence[float], *, tol: float = 0.5) -> bool:
    """A lower-is-better curve that ended clearly worse than both its start and its best."""
    if len(curve) < 3:
        return False
    first, last, best = curve[0], curve[-1], min(curve)
    span = max(abs(first), abs(best), abs(first - best), 1e-12)
    return last > first and last - best > tol * span


def curve_features(
    values: Mapping[int, float] | Sequence[float],
    *,
    direction: str = "minimize",
    curves: Mapping[str, Sequence[Any]] | None = None,
    plateau_window: int = 5,
    min_rel_delta: float = 1e-3,
    underfit_score: float = 0.6,
    overfit_gap: float = 0.1,
) -> CurveFeatures:
    """Features of one learning curve.

    Args:
        values: The objective per step (a trial's intermediate values) or a plain list.
        direction: ``"minimize"`` or ``"maximize"``: the study direction of this objective.
        curves: Optional per-epoch curves keyed by metric name (``"train/loss"``, ``"val/acc"``).
        plateau_window: Steps without improvement that make a plateau.
        min_rel_delta: Relative change below which a step does not count as an improvement.
        underfit_score: A training score (acc-like, in [0, 1]) below this is underfitting.
        overfit_gap: Train-minus-val score gap (absolute) above which a trial overfits.

    Returns:
        The curve features; all flags False when there is too little data.
    """
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction {direction!r} is invalid: use 'minimize' or 'maximize'")
    if isinstance(values, Mapping):
        steps = sorted(values)
        raw = [values[s] for s in steps]
    else:
        raw = list(values)
        steps = list(range(len(raw)))
    sign = 1.0 if direction == "minimize" else -1.0
    kw: dict[str, Any] = {"n_steps": len(raw)}

    finite_pairs = [(s, float(v)) for s, v in zip(steps, raw, strict=True) if _finite([v])]
    non_finite = _has_non_finite(raw)
    norm = [sign * v for _, v in finite_pairs]  # lower is better from here on
    if finite_pairs:
        kw["last"] = finite_pairs[-1][1]
        i_best = min(range(len(norm)), key=norm.__getitem__)
        kw["best"] = finite_pairs[i_best][1]
        kw["best_step"] = finite_pairs[i_best][0]
        kw["steps_since_best"] = len(norm) - 1 - i_best

    divergence: str | None = "non_finite" if non_finite else None
    if divergence is None and _rising(norm):
        divergence = "rising"

    # Plateau / still improving, on the direction-normalized objective curve.
    if len(norm) > plateau_window:
        before, window = norm[:-plateau_window], norm[-plateau_window:]
        best_before = min(before)
        tol = min_rel_delta * max(abs(best_before), 1e-12)
        gain = best_before - min(window)
        if gain <= tol:
            kw["plateau"] = True
        elif len(norm) >= 2 * plateau_window:
            span = max(norm[: plateau_window]) - min(norm)
            kw["still_improving"] = span > 0 and gain > 0.05 * span

    # Noise: step-to-step differences that zig-zag more than the curve trends.
    if len(norm) >= 5:
        diffs = [b - a for a, b in itertools.pairwise(norm)]
        noise = statistics.pstdev(diffs)
        kw["noise"] = noise
        trend = abs(norm[-1] - norm[0]) / len(diffs)
        reversals = sum(1 for a, b in itertools.pairwise(diffs) if a * b < 0)
        scale = max(abs(statistics.median(norm)), 1e-12)
        kw["noisy"] = (
            reversals >= 0.4 * (len(diffs) - 1)
            and noise > 1.5 * trend
            and noise > 1e-3 * scale
        )

    if curves:
        divergence = divergence or _curves_divergence(curves)
        kw.update(_fit_features(curves, underfit_score=underfit_score, overfit_gap=overfit_gap))
    if divergence:
        kw["diverged"] = True
        kw["divergence"] = divergence
        kw["plateau"] = False
        kw["still_improving"] = False
    return CurveFeatures(**kw)


def _curves_divergence(curves: Mapping[str, Sequence[Any]]) -> str | None:
    for name, xs in curves.items():
        if not is_lower_better(name) or not isinstance(xs, Sequence) or isinstance(xs, str):
            continue
        if _has_non_finite(xs):
            return "non_finite"
        if name.lower().startswith("train") and _rising(_finite(xs)):
            return "rising"
    return None


def _pairs(curves: Mapping[str, Sequence[Any]]) -> list[tuple[str, list[float], list[float]]]:
    """(metric, train curve, val curve) for each metric logged with both prefixes."""
    train: dict[str, list[float]] = {}
    val: dict[str, list[float]] = {}
    for name, xs in curves.items():
        if not isinstance(xs, Sequence) or isinstance(xs, str) or "/" not in name:
            continue
        prefix, metric = name.split("/", 1)
        if prefix.lower() == "train":
            train[metric] = _finite(xs)
        elif prefix.lower() in ("val", "valid", "validation"):
            val[metric] = _finite(xs)
    # losses first: they say most about fitting
    names = sorted(set(train) & set(val), key=lambda m: (not is_lower_better(m), m))
    return [(m, train[m], val[m]) for m in names if train[m] and val[m]]


def _fit_features(
    curves: Mapping[str, Sequence[Any]], *, underfit_score: float, overfit_gap: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric, tr, va in _pairs(curves):
        if out.get("overfit"):
            break  # the first metric pair (losses first) that shows overfitting names it
        lower = is_lower_better(metric)
        gap = (va[-1] - tr[-1]) if lower else (tr[-1] - va[-1])
        if "overfit_gap" not in out:
            out["overfit_gap"] = gap
            out["overfit_metric"] = metric
        if lower:
            v_best = min(va)
            rose = len(va) >= 3 and va[-1] - v_best > 0.1 * max(abs(v_best), 1e-12)
            train_fell = len(tr) >= 2 and tr[-1] < tr[0]
            big_gap = gap > 0.3 * max(abs(va[-1]), 1e-12) and gap > 0
            if (rose and train_fell) or (big_gap and len(va) >= 3 and va[-1] >= min(va[:-1])):
                out.update(overfit=True, overfit_gap=gap, overfit_metric=metric)
        else:
            stalled = len(va) >= 3 and va[-1] <= max(va[:-1]) + 1e-12
            if gap > overfit_gap and (stalled or gap > 2 * overfit_gap):
                out.update(overfit=True, overfit_gap=gap, overfit_metric=metric)
    # Underfitting: a low training score, or a training loss that barely moved.
    for name, xs in curves.items():
        if not name.lower().startswith("train") or not isinstance(xs, Sequence):
            continue
        ys = _finite(xs) if not isinstance(xs, str) else []
        if len(ys) < 2:
            continue
        if not is_lower_better(name):
            if 0.0 <= ys[-1] <= 1.0 and ys[-1] < underfit_score:
                out["underfit"] = True
        elif ys[0] > 0 and (ys[0] - min(ys)) < 0.1 * ys[0]:
            out["underfit"] = True
    return out


def per_class_summary(per_class: Any, *, k: int = 3) -> list[PerClassSummary]:
    """Summaries of a ``per_class`` user attr (``{"f1": {class: value}}``); weakest k named.

    Malformed entries are skipped rather than raised on: the attr is data written by a trial.
    """
    if not isinstance(per_class, Mapping):
        return []
    out: list[PerClassSummary] = []
    for metric, table in per_class.items():
        if not isinstance(table, Mapping):
            continue
        items = [(str(c), float(v)) for c, v in table.items() if _finite([v])]
        if not items:
            continue
        lower = is_lower_better(str(metric))
        items.sort(key=lambda cv: cv[1], reverse=lower)
        vals = [v for _, v in items]
        out.append(
            PerClassSummary(
                metric=str(metric),
                n_classes=len(items),
                mean=statistics.fmean(vals),
                min=min(vals),
                weakest=items[:k],
            )
        )
    return out


def fold_summary(folds: Any) -> FoldSummary | None:
    """Summary of a ``folds`` user attr (a list of per-fold values), or None."""
    if not isinstance(folds, Sequence) or isinstance(folds, str):
        return None
    vals = _finite(folds)
    if not vals:
        return None
    return FoldSummary(
        n=len(vals),
        mean=statistics.fmean(vals),
        std=statistics.pstdev(vals) if len(vals) > 1 else 0.0,
        min=min(vals),
        max=max(vals),
    )


def trial_features(
    trial: FrozenTrial, direction: str = "minimize", **kwargs: Any
) -> CurveFeatures:
    """:func:`curve_features` of a FrozenTrial: intermediate values plus its ``curves`` attr."""
    curves = trial.user_attrs.get("curves")
    if not isinstance(curves, Mapping):
        curves = None
    return curve_features(
        trial.intermediate_values, direction=direction, curves=curves, **kwargs
    )


def _directions(direction: str | Sequence[str]) -> list[str]:
    return [direction] if isinstance(direction, str) else list(direction)


def conclusive_verdict(
    trials: Sequence[FrozenTrial],
    direction: str | Sequence[str],
    *,
    window: int = 3,
    min_rel_improvement: float = 0.01,
) -> Verdict | None:
    """A verdict on the latest finished trials when the situation needs no analysis.

    Rules, on trials in COMPLETE, PRUNED or FAIL state ordered by number:

    - ``"clear_divergence"``: the latest finished trial diverged (non-finite values or a curve
      that ended worse than it started) and so did at least half of the last ``window``.
    - ``"clear_improvement"``: the latest finished trial is COMPLETE, the new best by more than
      ``min_rel_improvement`` (relative to the previous best; the absolute change counts when
      the previous best is 0), and its curves raise no divergence or overfitting flag.
      Single-objective only.

    Args:
        trials: Every trial of the study (RUNNING ones are ignored).
        direction: The study direction, or one per objective.
        window: How many latest finished trials the divergence rule looks at.
        min_rel_improvement: Margin a new best must beat the previous best by.

    Returns:
        The verdict, or None when the analyst should look.
    """
    dirs = _directions(direction)
    for d in dirs:
        if d not in ("minimize", "maximize"):
            raise ValueError(f"direction {d!r} is invalid: use 'minimize' or 'maximize'")
    finished = sorted(
        (t for t in trials if t.state in _FINISHED),
        key=lambda t: t.number,
    )
    if not finished:
        return None

    recent = finished[-window:]
    diverged = [trial_features(t, dirs[0]).diverged for t in recent]
    if diverged[-1] and sum(diverged) * 2 >= len(recent):
        return "clear_divergence"

    if len(dirs) != 1:
        return None
    latest = finished[-1]
    if latest.state != TrialState.COMPLETE or latest.value is None:
        return None
    sign = 1.0 if dirs[0] == "minimize" else -1.0
    previous = [
        sign * t.value
        for t in finished[:-1]
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]
    if not previous or not math.isfinite(latest.value):
        return None
    prev_best = min(previous)
    now = sign * latest.value
    margin = min_rel_improvement * (abs(prev_best) if prev_best != 0 else 1.0)
    if prev_best - now <= margin:
        return None
    feats = trial_features(latest, dirs[0])
    if feats.diverged or feats.overfit:
        return None
    return "clear_improvement"
