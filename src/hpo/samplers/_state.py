"""The optimizer's state in parameter units, as text for the LLM (``StudyView.optimizer_state``).

Hybrid mode shows the LLM what the classical leader has learned, the Centaur recipe (arXiv
2603.24647): for CMA-ES the search distribution's mean, step size and main covariance axes,
converted back to parameter units (log parameters in value and log10); for TPE and GP what
separates the good trials from the rest, per parameter; then rough parameter importances and
the best trials. Bounded: a line or two per parameter, whatever the number of trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpo.samplers._leader import CmaSnapshot, UnitScale

__all__ = ["describe_state", "importances"]

_LEADER_NAMES = {"cmaes": "CMA-ES", "tpe": "TPE", "gp": "a Gaussian process (GP)"}
_GOOD_SHARE = 0.25
_MIN_FOR_IMPORTANCE = 8
_MAX_AXES = 3


def describe_state(
    *,
    trials: Sequence[FrozenTrial],
    space: Mapping[str, BaseDistribution],
    directions: Sequence[str],
    leader: str,
    snapshot: CmaSnapshot | None = None,
    candidates: Sequence[Mapping[str, Any]] = (),
    n_best: int = 3,
) -> str:
    """Render the leader's state and what the finished trials say.

    Args:
        trials: Every trial of the study.
        space: The searched parameters.
        directions: ``minimize``/``maximize`` per objective.
        leader: ``cmaes``, ``tpe`` or ``gp``.
        snapshot: CMA-ES's replayed state (``cmaes`` only).
        candidates: Points drawn from the leader for the LLM to rank (may be empty).
        n_best: How many of the best trials to list.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and _finite(t)]
    name = _LEADER_NAMES.get(leader, leader)
    lines = [
        f"The classical optimizer leading this study is {name}; it learns from every finished "
        f"trial, yours included ({len(complete)} complete so far)."
    ]
    if snapshot is not None:
        lines += _cma_lines(snapshot)
    single = len(directions) == 1
    if single and len(complete) >= 4:
        delegated = {
            n: d for n, d in space.items()
            if snapshot is None or n not in {s.name for s in snapshot.scales}
        }
        if delegated:
            lines += _good_vs_rest(complete, delegated, directions[0])
        imp = importances(complete, space, directions[0])
        if imp:
            lines.append(
                "Rough importance (share of the objective's rank variance each parameter "
                "explains, binned): "
                + ", ".join(f"{n} {v:.2f}" for n, v in imp.items())
            )
        lines += _best_lines(complete, space, directions[0], n_best)
    elif not single:
        lines.append("Several objectives: no single ranking of the trials; read the history.")
    if candidates:
        lines.append(
            f"Candidates drawn from {name}'s current distribution. Rank them: propose the best "
            "ones by copying their values exactly (each of your proposals is snapped to the "
            "nearest candidate); choose any parameter a candidate does not list yourself:"
        )
        for i, c in enumerate(candidates, start=1):
            lines.append(f"  {i}: " + ", ".join(
                f"{k}={_value(v, space.get(k))}" for k, v in c.items()
            ))
    return "\n".join(lines)


# ---------------------------------------------------------------------- CMA-ES


def _cma_lines(s: CmaSnapshot) -> list[str]:
    waiting = s.n_waiting
    lines = [
        f"CMA-ES: generation {s.generation}, population {s.population}, {s.n_told} trials "
        f"told{f' ({waiting} more wait for the next generation)' if waiting else ''}; "
        f"step size sigma {s.sigma:.3g} on the unit-scaled space (started at {s.sigma0:.3g}).",
        "Search distribution (the next CMA-ES trials are drawn from it):",
    ]
    sd_unit = s.sigma * np.sqrt(np.clip(np.diag(s.cov), 0.0, None))
    for i, sc in enumerate(s.scales):
        mean = sc.from_unit(float(s.mean[i]))
        spread = float(sd_unit[i]) * sc.internal_span()
        if sc.log:
            lines.append(
                f"  {sc.name} (log): mean {_num(mean)} (log10 {math.log10(mean):.2f}), "
                f"sd {spread / math.log(10):.2f} decades (x/÷ {math.exp(spread):.2g})"
            )
        else:
            lines.append(f"  {sc.name}: mean {_num(mean)}, sd {_num(spread)}")
    if len(s.scales) >= 2:
        evals, evecs = np.linalg.eigh((s.cov + s.cov.T) / 2.0)
        order = np.argsort(evals)[::-1]
        total = float(np.sum(np.clip(evals, 0.0, None))) or 1.0
        lines.append("Main axes of the covariance (one sd along the axis moves):")
        for rank, j in enumerate(order[:_MAX_AXES], start=1):
            lam = max(float(evals[j]), 0.0)
            step = s.sigma * math.sqrt(lam) * evecs[:, j]
            big = max(float(np.max(np.abs(evecs[:, j]))), 1e-12)
            moves = [
                _move(sc, float(step[i]))
                for i, sc in enumerate(s.scales)
                if abs(float(evecs[i, j])) >= 0.25 * big
            ]
            lines.append(f"  axis {rank} ({lam / total:.0%} of the variance): " + ", ".join(moves))
    return lines


def _move(sc: UnitScale, unit_step: float) -> str:
    delta = unit_step * sc.internal_span()
    if sc.log:
        return f"{sc.name} x{math.exp(delta):.3g} (log10 {delta / math.log(10):+.2f})"
    return f"{sc.name} {delta:+.3g}"


# ---------------------------------------------------------------------- what the trials say


def _good_vs_rest(
    complete: list[FrozenTrial], space: Mapping[str, BaseDistribution], direction: str
) -> list[str]:
    ranked = sorted(complete, key=lambda t: _loss(t, direction))
    k = max(1, math.ceil(_GOOD_SHARE * len(ranked)))
    good, rest = ranked[:k], ranked[k:]
    lines = [f"Good trials (the best {k} of {len(ranked)} complete) vs the rest:"]
    for name, dist in space.items():
        g = [t.params[name] for t in good if name in t.params]
        r = [t.params[name] for t in rest if name in t.params]
        if not g:
            continue
        if isinstance(dist, CategoricalDistribution):
            lines.append(f"  {name}: good {_freqs(g, dist)} | rest {_freqs(r, dist) or 'none'}")
        else:
            lines.append(f"  {name}: good {_range(g, dist)} | rest {_range(r, dist) or 'none'}")
    return lines


def _freqs(values: list[Any], dist: CategoricalDistribution) -> str:
    if not values:
        return ""
    parts = []
    for c in dist.choices:
        n = sum(1 for v in values if v == c and isinstance(v, bool) == isinstance(c, bool))
        if n:
            parts.append(f"{c} {n / len(values):.0%}")
    return ", ".join(parts)


def _range(values: list[Any], dist: BaseDistribution) -> str:
    nums = sorted(float(v) for v in values if isinstance(v, int | float))
    if not nums:
        return ""
    med = nums[len(nums) // 2]
    return f"{_value(nums[0], dist)}..{_value(nums[-1], dist)} (median {_value(med, dist)})"


def importances(
    complete: Sequence[FrozenTrial], space: Mapping[str, BaseDistribution], direction: str
) -> dict[str, float]:
    """A cheap importance estimate: per parameter, the share of the variance of the trials'
    objective ranks explained by the parameter (numeric ones binned into quartiles), normalized
    to sum 1, largest first; empty with fewer than 8 complete trials."""
    if len(complete) < _MIN_FOR_IMPORTANCE:
        return {}
    order = sorted(range(len(complete)), key=lambda i: _loss(complete[i], direction))
    rank = [0.0] * len(complete)
    for pos, i in enumerate(order):
        rank[i] = float(pos)
    raw: dict[str, float] = {}
    for name, dist in space.items():
        groups: dict[Any, list[float]] = {}
        values = [(t.params.get(name), rank[i]) for i, t in enumerate(complete)]
        present = [(v, r) for v, r in values if v is not None]
        if len({repr(v) for v, _ in present}) < 2:
            continue
        if isinstance(dist, CategoricalDistribution):
            for v, rk in present:
                groups.setdefault(repr(v), []).append(rk)
        else:
            keyed = sorted(present, key=lambda p: float(p[0]))
            for j, (_, rk) in enumerate(keyed):
                groups.setdefault(min(3, 4 * j // len(keyed)), []).append(rk)
        raw[name] = _eta2(groups)
    total = sum(raw.values())
    if total <= 0:
        return {}
    return dict(sorted(((n, v / total) for n, v in raw.items()), key=lambda p: -p[1]))


def _eta2(groups: Mapping[Any, list[float]]) -> float:
    everything = [r for g in groups.values() for r in g]
    mean = sum(everything) / len(everything)
    total = sum((r - mean) ** 2 for r in everything)
    if total <= 0:
        return 0.0
    between = sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values())
    return between / total


def _best_lines(
    complete: list[FrozenTrial], space: Mapping[str, BaseDistribution], direction: str, k: int
) -> list[str]:
    best = sorted(complete, key=lambda t: (_loss(t, direction), t.number))[:k]
    lines = ["Best trials:"]
    for t in best:
        params = ", ".join(
            f"{n}={_value(t.params[n], space.get(n))}" for n in space if n in t.params
        )
        lines.append(f"  #{t.number} value {_num(t.values[0])}: {params}")
    return lines


# ---------------------------------------------------------------------- formatting


def _loss(t: FrozenTrial, direction: str) -> float:
    v = float(t.values[0])
    return v if str(direction).lower().startswith("min") else -v


def _finite(t: FrozenTrial) -> bool:
    return bool(t.values) and all(
        isinstance(v, int | float) and math.isfinite(v) for v in t.values
    )


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def _value(v: Any, dist: BaseDistribution | None) -> str:
    """A parameter value; log-scale ones also in log10."""
    if (
        isinstance(dist, FloatDistribution | IntDistribution)
        and dist.log
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and v > 0
    ):
        return f"{_num(v)} (log10 {math.log10(v):.2f})"
    return _num(v)
