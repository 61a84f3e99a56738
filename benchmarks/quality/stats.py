"""Normalized regret and bootstrap confidence intervals.

Normalized regret of a study after ``t`` trials (HPOBench / YAHPO style)::

    regret_t = |best_t - optimum| / |worst - optimum|        in [0, 1]

where ``best_t`` is the best objective among its first ``t`` trials (failed trials ignored;
before any success ``best_t = worst``), and ``optimum`` / ``worst`` bound the problem: exact
for the synthetic functions (the box's minimum and maximum) and for the tabulated benchmark
(the table's best and worst entry, every sample being snapped onto the table); for the
scikit-learn problems, whose optimum is unknown, the best and worst value that any run of the
same report observed on the problem. So 0 is the best value known, 1 the worst.

The 95 % intervals are percentile bootstraps of the mean over seeds (fixed generator, so a
rerun of the same runs prints the same table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BOOTSTRAP = 2000
_RNG_SEED = 12345


def best_so_far(values: Sequence[float | None], direction: str, worst: float) -> np.ndarray:
    """Best value after each trial (``worst`` until the first successful one)."""
    out = np.empty(len(values))
    best = worst
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v) and (
            v < best if direction == "minimize" else v > best
        ):
            best = v
        out[i] = best
    return out


def normalized_regret(best: np.ndarray, optimum: float, worst: float) -> np.ndarray:
    """``|best - optimum| / |worst - optimum|`` clipped to [0, 1] (0 for a flat problem)."""
    span = abs(worst - optimum)
    if span == 0:
        return np.zeros_like(best)
    return np.clip(np.abs(best - optimum) / span, 0.0, 1.0)


def bootstrap_mean_ci(
    samples: np.ndarray, *, level: float = 0.95, n: int = BOOTSTRAP
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and its percentile-bootstrap interval, for every column at once.

    Args:
        samples: ``(seeds, T)`` (or ``(seeds,)``) values.
        level: Coverage of the interval.
        n: Bootstrap resamples.

    Returns:
        ``(mean, low, high)``, each of shape ``(T,)`` (or scalars as 0-d arrays).
    """
    x = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(_RNG_SEED)
    idx = rng.integers(0, x.shape[0], size=(n, x.shape[0]))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return x.mean(axis=0), low, high


def bootstrap_diff_ci(
    a: np.ndarray, b: np.ndarray, *, level: float = 0.95, n: int = BOOTSTRAP
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` for independent samples, with its percentile-bootstrap interval."""
    rng = np.random.default_rng(_RNG_SEED)
    ia = rng.integers(0, len(a), size=(n, len(a)))
    ib = rng.integers(0, len(b), size=(n, len(b)))
    diffs = np.asarray(a)[ia].mean(axis=1) - np.asarray(b)[ib].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return float(np.mean(a) - np.mean(b)), float(low), float(high)
