"""A study's report: a leaderboard, plots and one self-contained HTML page.

``python -m hpo.report --storage sqlite:///outputs/hpo.db --study digits --out report/`` writes

- ``leaderboard.csv``: every trial, best first (number, state, objective value(s), params,
  source, tokens, cost, duration, rationale, error);
- PNG plots (matplotlib, no display needed): ``history.png``, ``importances.png``,
  ``parallel_coordinates.png``, ``learning_curves.png`` (top-k trials),
  ``params_vs_objective.png``, ``best_by_choice.png`` (best value per model choice and per every
  other categorical parameter), ``by_source.png`` (objective by proposal source: llm, repaired,
  clamped, fallback, baseline), ``tokens_cost.png`` and, for multi-objective studies,
  ``pareto_front.png``. A plot the study has no data for is skipped, with the reason in the
  report;
- ``report.html``: a summary, the leaderboard and every plot inlined (base64), one file to send.

Everything is read from the storage; free text from LLMs is escaped, never interpreted.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import logging
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.attrs import (
    COST_USD,
    COST_USD_TOTAL,
    CURVES,
    ERROR,
    FALLBACK_TOTAL,
    LLM_CALLS_TOTAL,
    RATIONALE,
    SOURCE,
    TOKENS_IN,
    TOKENS_IN_TOTAL,
    TOKENS_OUT,
    TOKENS_OUT_TOTAL,
)
from hpo.best import objective_names
from hpo.errors import ConfigError, HPOError, first_line
from hpo.samplers import llm_share_summary
from hpo.storage import load_existing_study, open_existing

__all__ = [
    "Report", "axis_scale", "build_report", "importance_trials_needed", "leaderboard_rows",
    "load_study", "main", "objective_names",
]

log = logging.getLogger(__name__)

PLOT_NAMES: tuple[str, ...] = (
    "history", "importances", "parallel_coordinates", "learning_curves", "params_vs_objective",
    "best_by_choice", "by_source", "tokens_cost", "pareto_front",
)
_SOURCE_COLORS = {
    "baseline": "#7f7f7f", "llm": "#1f77b4", "repaired": "#ff7f0e", "clamped": "#9467bd",
    "fallback": "#2ca02c", "unknown": "#bcbd22",
}
_RATIONALE_HTML_CHARS = 240
# importances: complete trials per searched parameter, and at least this many in all
IMPORTANCE_TRIALS_PER_PARAM = 3
IMPORTANCE_MIN_TRIALS = 10
# an objective whose positive values span more than this ratio is drawn on a log axis
LOG_SPAN = 10.0


@dataclass(frozen=True, kw_only=True)
class Report:
    """The files of a written report.

    Attributes:
        out_dir: The report's directory.
        leaderboard: Path of ``leaderboard.csv``.
        html: Path of ``report.html``.
        plots: Plot name → PNG path, for the plots written.
        skipped: Plot name → why it was not drawn.
    """

    out_dir: Path
    leaderboard: Path
    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- loading


def load_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Open ``study_name`` in the storage at ``storage_url`` for reading.

    Args:
        storage_url: A URL as accepted by :func:`hpo.storage.open_storage`.
        study_name: The study; None picks the only study of the storage.

    Raises:
        ConfigError: The storage cannot be opened, or it holds no such study.
    """
    return load_existing_study(open_existing(storage_url), storage_url, study_name,
                               latest=True)


# ---------------------------------------------------------------------------- leaderboard


def _sign(direction: StudyDirection) -> float:
    return -1.0 if direction == StudyDirection.MAXIMIZE else 1.0


def _ranked(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials best first (Pareto front first when multi-objective), then the rest."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    first = _sign(study.directions[0])
    if len(study.directions) == 1:
        complete.sort(key=lambda t: (first * t.values[0], t.number))
    else:
        front = {t.number for t in _pareto(study, complete)}
        complete.sort(key=lambda t: (t.number not in front, first * t.values[0], t.number))
    order = {TrialState.PRUNED: 0, TrialState.RUNNING: 1, TrialState.WAITING: 2,
             TrialState.FAIL: 3}
    done = {t.number for t in complete}
    others = sorted((t for t in trials if t.number not in done),
                    key=lambda t: (order.get(t.state, 9), t.number))
    return complete + others


def _pareto(study: optuna.Study, complete: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    signs = [_sign(d) for d in study.directions]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        pa = [s * v for s, v in zip(signs, a.values, strict=True)]
        pb = [s * v for s, v in zip(signs, b.values, strict=True)]
        return all(x <= y for x, y in zip(pa, pb, strict=True)) and pa != pb

    return [t for t in complete if not any(dominates(o, t) for o in complete if o is not t)]


def _param_names(trials: Sequence[FrozenTrial]) -> list[str]:
    names: dict[str, None] = {}
    for t in trials:
        for name in t.params:
            names.setdefault(name, None)
    return list(names)


def leaderboard_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, best first: the content of ``leaderboard.csv``.

    Keys: ``rank`` (complete trials only), ``number``, ``state``, one key per objective name,
    ``pareto`` (multi-objective only), ``params_<name>`` per parameter, ``source``, ``tokens``,
    ``cost_usd``, ``duration_s``, ``rationale``, ``error``.
    """
    trials = study.get_trials(deepcopy=False)
    names = objective_names(study)
    params = _param_names(trials)
    multi = len(study.directions) > 1
    ranked = _ranked(study, trials)
    front = {t.number for t in _pareto(study, [t for t in trials
                                               if t.state == TrialState.COMPLETE and t.values])}
    rows = []
    rank = 0
    for t in ranked:
        complete = t.state == TrialState.COMPLETE and bool(t.values)
        rank += complete
        row: dict[str, Any] = {"rank": rank if complete else "", "number": t.number,
                               "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if complete else ""
        if multi:
            row["pareto"] = (t.number in front) if complete else ""
        for p in params:
            row[f"params_{p}"] = t.params.get(p, "")
        attrs = t.user_attrs
        row["source"] = attrs.get(SOURCE, "")
        tokens = _tokens(t)
        row["tokens"] = tokens if tokens is not None else ""
        cost = attrs.get(COST_USD)
        row["cost_usd"] = float(cost) if cost is not None else ""
        row["duration_s"] = (round(t.duration.total_seconds(), 3)
                             if t.duration is not None else "")
        row["rationale"] = " ".join(str(attrs.get(RATIONALE, "") or "").split())
        row["error"] = " ".join(str(attrs.get(ERROR, "") or "").split())
        rows.append(row)
    return rows


def _tokens(t: FrozenTrial) -> int | None:
    attrs = t.user_attrs
    if TOKENS_IN not in attrs and TOKENS_OUT not in attrs:
        return None
    return int(attrs.get(TOKENS_IN) or 0) + int(attrs.get(TOKENS_OUT) or 0)


def _write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


# ---------------------------------------------------------------------------- plots


class _Skip(Exception):
    """A plot the study has no data for; the message says why."""


def _figure(n_panels: int = 1, *, ncols: int | None = None, width: float = 6.4,
            height: float = 4.0) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    ncols = ncols or n_panels
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n_panels)]
    return fig, axes


def _source(t: FrozenTrial) -> str:
    return str(t.user_attrs.get(SOURCE) or "unknown")


def _source_color(source: str) -> str:
    return _SOURCE_COLORS.get(source, "#17becf")


def _better(direction: StudyDirection) -> Callable[[float, float], bool]:
    if direction == StudyDirection.MAXIMIZE:
        return lambda a, b: a > b
    return lambda a, b: a < b


def _plot_history(ctx: _Context) -> Any:
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    fig, axes = _figure(len(ctx.names), ncols=1, width=8.0, height=3.6)
    for i, (ax, name, direction) in enumerate(zip(axes, ctx.names, ctx.study.directions,
                                                  strict=True)):
        by_number = sorted(ctx.complete, key=lambda t: t.number)
        for source in sorted({_source(t) for t in by_number}):
            pts = [t for t in by_number if _source(t) == source]
            ax.scatter([t.number for t in pts], [t.values[i] for t in pts], s=28,
                       color=_source_color(source), label=source, zorder=3)
        better = _better(direction)
        best: list[float] = []
        for t in by_number:
            v = t.values[i]
            best.append(v if not best or better(v, best[-1]) else best[-1])
        ax.step([t.number for t in by_number], best, where="post", color="#d62728",
                label="best so far", zorder=2)
        ax.set_xlabel("trial")
        _integer_ticks(ax, [t.number for t in by_number])
        scale = axis_scale([t.values[i] for t in by_number])
        ax.set_yscale(scale)
        ax.set_ylabel(_scaled(name, scale))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"Optimization history ({_dir_word(ctx.study.directions)})")
    return fig


def _integer_ticks(ax: Any, values: Sequence[float] = ()) -> None:
    """Whole-number ticks on the x axis (epochs, trial numbers), also for one or two values:
    the view then spans at least one unit around them instead of a fraction."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    finite = [v for v in values if math.isfinite(v)]
    if finite and max(finite) - min(finite) < 2:
        ax.set_xlim(min(finite) - 0.5, max(finite) + 0.5)


def axis_scale(values: Sequence[float]) -> str:
    """``log`` for positive values spanning more than a decade (parameter counts, losses near
    zero), else ``linear``: an objective's axis on the scale it varies on."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > LOG_SPAN:
        return "log"
    return "linear"


def _scaled(name: str, scale: str) -> str:
    return f"{name} (log scale)" if scale == "log" else name


def _dir_word(directions: Sequence[StudyDirection]) -> str:
    return ", ".join("maximize" if d == StudyDirection.MAXIMIZE else "minimize"
                     for d in directions)


def importance_trials_needed(n_params: int) -> int:
    """Complete trials before importances are drawn: :data:`IMPORTANCE_TRIALS_PER_PARAM` per
    parameter, at least :data:`IMPORTANCE_MIN_TRIALS`. fANOVA fits a random forest from the
    parameters to the objective; from fewer trials its ranking is mostly noise."""
    return max(IMPORTANCE_MIN_TRIALS, IMPORTANCE_TRIALS_PER_PARAM * n_params)


def _plot_importances(ctx: _Context) -> Any:
    if len(ctx.params) < 2:
        raise _Skip(f"needs 2 parameters, the study has {len(ctx.params)}")
    needed = importance_trials_needed(len(ctx.params))
    if len(ctx.complete) < needed:
        raise _Skip(
            f"{len(ctx.complete)} complete trials are too few to rank {len(ctx.params)} "
            f"parameters: importances need {needed} ({IMPORTANCE_TRIALS_PER_PARAM} per "
            f"parameter, at least {IMPORTANCE_MIN_TRIALS}); with fewer, fANOVA's ranking is "
            "mostly noise"
        )
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        importances = get_param_importances(
            ctx.study, evaluator=FanovaImportanceEvaluator(seed=0),
            target=lambda t: t.values[0],
        )
    except Exception as exc:  # e.g. a dynamic search space, or no variation at all
        raise _Skip(f"Optuna could not compute importances: {first_line(exc)}") from exc
    if not importances:
        raise _Skip("Optuna returned no importances")
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, (ax,) = _figure(1, width=7.0, height=0.5 * len(items) + 1.6)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {ctx.names[0]} (fANOVA)")
    ax.set_title(f"Hyperparameter importances ({len(ctx.complete)} complete trials)")
    ax.set_xlim(0, max(v for _, v in items) * 1.15 or 1.0)
    return fig


def _axis_values(ctx: _Context, name: str, trials: Sequence[FrozenTrial]) -> tuple[
        list[float], list[str], list[float]]:
    """Positions in [0, 1] of ``name`` for ``trials`` (NaN when absent), tick labels/positions."""
    dist = ctx.distributions.get(name)
    raw = [t.params.get(name) for t in trials]
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        n = max(len(choices) - 1, 1)
        pos = [choices.index(v) / n if v in choices else math.nan for v in raw]
        return pos, [str(c) for c in choices], [i / n for i in range(len(choices))]
    log_scale = bool(getattr(dist, "log", False))
    nums = [float(v) for v in raw if isinstance(v, int | float)]
    if not nums:
        return [math.nan] * len(raw), [], []
    lo = getattr(dist, "low", min(nums))
    hi = getattr(dist, "high", max(nums))

    def scale(v: float) -> float:
        return math.log10(v) if log_scale and v > 0 else v

    a, b = scale(lo), scale(hi)
    span = (b - a) or 1.0
    pos = [(scale(float(v)) - a) / span if isinstance(v, int | float) else math.nan for v in raw]
    ticks, at = [f"{lo:.3g}", f"{hi:.3g}"], [0.0, 1.0]
    if log_scale and lo > 0:  # the decades in between, where they do not crowd the ends
        for k in range(math.ceil(a), math.floor(b) + 1):
            y = (k - a) / span
            if 0.08 < y < 0.92:
                ticks.append(f"{10.0 ** k:.3g}")
                at.append(y)
    return pos, ticks, at


def _plot_parallel(ctx: _Context) -> Any:
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    if not ctx.params:
        raise _Skip("the study has no parameters")
    import matplotlib as mpl

    trials = ctx.complete
    axes_names = [p + (" (log)" if getattr(ctx.distributions.get(p), "log", False) else "")
                  for p in ctx.params] + list(ctx.names)
    columns: list[list[float]] = []
    labels: list[tuple[list[str], list[float]]] = []
    for name in ctx.params:
        pos, ticks, at = _axis_values(ctx, name, trials)
        columns.append(pos)
        labels.append((ticks, at))
    for i in range(len(ctx.names)):
        vals = [t.values[i] for t in trials]
        lo, hi = min(vals), max(vals)
        span = (hi - lo) or 1.0
        columns.append([(v - lo) / span for v in vals])
        labels.append(([f"{lo:.4g}", f"{hi:.4g}"], [0.0, 1.0]))
    color_vals = [t.values[0] for t in trials]
    lo, hi = min(color_vals), max(color_vals)
    cmap = mpl.colormaps["viridis"]
    maximize = ctx.study.directions[0] == StudyDirection.MAXIMIZE
    fig, (ax,) = _figure(1, width=max(7.0, 1.6 * len(axes_names)), height=4.8)
    # best trials drawn last so that they stay on top
    order = sorted(range(len(trials)), key=lambda j: color_vals[j] * (1 if maximize else -1))
    for j in order:
        frac = (color_vals[j] - lo) / ((hi - lo) or 1.0)
        frac = frac if maximize else 1.0 - frac
        ys = [col[j] for col in columns]
        ax.plot(range(len(axes_names)), ys, color=cmap(frac), alpha=0.8, linewidth=1.4)
    for x, (ticks, at) in enumerate(labels):
        ax.axvline(x, color="black", linewidth=0.8)
        for label, y in zip(ticks, at, strict=True):
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.2, len(axes_names) - 0.4)
    ax.set_title(f"Parallel coordinates (color: {ctx.names[0]}, brighter is better)")
    return fig


def _curve_series(t: FrozenTrial, metric: str | None) -> tuple[list[float], list[float]] | None:
    curves = t.user_attrs.get(CURVES)
    if metric is not None and isinstance(curves, dict) and isinstance(curves.get(metric), list):
        ys = [math.nan if v is None else float(v) for v in curves[metric]]
        epochs = curves.get("epoch")
        xs = ([float(e) for e in epochs] if isinstance(epochs, list) and len(epochs) == len(ys)
              else [float(i) for i in range(len(ys))])
        return xs, ys
    if metric is None and t.intermediate_values:
        steps = sorted(t.intermediate_values)
        return [float(s) for s in steps], [float(t.intermediate_values[s]) for s in steps]
    return None


def _plot_learning_curves(ctx: _Context) -> Any:
    top = ctx.ranked_complete[: ctx.top_k]
    if not top:
        raise _Skip("no complete trial yet")
    metrics: list[tuple[str | None, str]] = []
    keys = {k for t in top if isinstance(t.user_attrs.get(CURVES), dict)
            for k in t.user_attrs[CURVES]}
    objective = ctx.names[0]
    if objective in keys:
        metrics.append((objective, objective))
    elif any(t.intermediate_values for t in top):
        metrics.append((None, f"{objective} (reported)"))
    else:
        val_keys = sorted(k for k in keys if k.startswith("val/"))
        if val_keys:
            metrics.append((val_keys[0], val_keys[0]))
    for loss in ("val/loss", "train/loss"):
        if loss in keys and all(m != loss for m, _ in metrics):
            metrics.append((loss, loss))
            break
    if not metrics:
        raise _Skip("no trial stored curves or intermediate values")
    fig, axes = _figure(len(metrics), width=6.0, height=4.2)
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        steps: list[float] = []
        for rank, t in enumerate(top, start=1):
            series = _curve_series(t, metric)
            if series is None:
                continue
            steps += series[0]
            ax.plot(*series, marker="o", markersize=3,
                    label=f"#{t.number} (rank {rank}, {_source(t)})")
        ax.set_xlabel("epoch" if metric is not None else "step")
        _integer_ticks(ax, steps)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"Learning curves of the top {len(top)} trials")
    return fig


def _plot_params_vs_objective(ctx: _Context) -> Any:
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    if not ctx.params:
        raise _Skip("the study has no parameters")
    ncols = min(3, len(ctx.params))
    fig, axes = _figure(len(ctx.params), ncols=ncols, width=4.6, height=3.6)
    rng = random.Random(0)
    yscale = axis_scale([t.values[0] for t in ctx.complete])
    for ax, name in zip(axes, ctx.params, strict=True):
        dist = ctx.distributions.get(name)
        pts = [t for t in ctx.complete if name in t.params]
        colors = [_source_color(_source(t)) for t in pts]
        ys = [t.values[0] for t in pts]
        if isinstance(dist, CategoricalDistribution):
            choices = [str(c) for c in dist.choices]
            xs = [choices.index(str(t.params[name])) + rng.uniform(-0.15, 0.15)
                  if str(t.params[name]) in choices else math.nan for t in pts]
            ax.set_xticks(range(len(choices)), choices, fontsize=8)
        else:
            xs = [float(t.params[name]) for t in pts]
            if getattr(dist, "log", False):
                ax.set_xscale("log")
        ax.scatter(xs, ys, c=colors, s=24)
        ax.set_xlabel(name + (" (log)" if getattr(dist, "log", False) else ""))
        ax.set_yscale(yscale)
        ax.set_ylabel(_scaled(ctx.names[0], yscale))
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    sources = sorted({_source(t) for t in ctx.complete})
    axes[0].legend(handles=[Line2D([], [], marker="o", linestyle="", color=_source_color(s),
                                   label=s) for s in sources], fontsize=7)
    fig.suptitle(f"Hyperparameters vs {ctx.names[0]} (color: source)")
    return fig


def _plot_best_by_choice(ctx: _Context) -> Any:
    """A dot plot per categorical parameter: every trial of a choice (grey) and its best (one
    marker, labelled). Dots, not bars: the axis spans the values, and no bar length suggests
    a ratio that a truncated axis would not show."""
    cats = [p for p in ctx.params if isinstance(ctx.distributions.get(p),
                                                   CategoricalDistribution)]
    cats.sort(key=lambda p: (p != "model", p))  # the model choice first
    if not cats:
        raise _Skip("the study has no categorical parameter (such as model)")
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    better = _better(ctx.study.directions[0])
    scale = axis_scale([t.values[0] for t in ctx.complete])
    n_rows = max(len(ctx.distributions[c].choices) for c in cats)
    fig, axes = _figure(len(cats), ncols=min(2, len(cats)), width=5.6,
                        height=1.4 + 0.45 * n_rows)
    for ax, name in zip(axes, cats, strict=True):
        values: dict[str, list[float]] = {}
        best: dict[str, tuple[float, int]] = {}
        for t in ctx.complete:
            if name not in t.params:
                continue
            key, v = str(t.params[name]), t.values[0]
            values.setdefault(key, []).append(v)
            if key not in best or better(v, best[key][0]):
                best[key] = (v, t.number)
        keys = [str(c) for c in ctx.distributions[name].choices if str(c) in best]
        for y, k in enumerate(keys):
            ax.scatter(values[k], [y] * len(values[k]), color="#bbbbbb", s=18, zorder=2)
            ax.scatter([best[k][0]], [y], color="#1f77b4", s=60, zorder=3)
            ax.annotate(f"{best[k][0]:.4g}  #{best[k][1]}, n={len(values[k])}",
                        (best[k][0], y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=7)
        ax.set_yticks(range(len(keys)), keys, fontsize=8)
        ax.set_ylim(-0.6, len(keys) - 0.4)
        ax.set_xscale(scale)
        _pad_to_data(ax, [v for k in keys for v in values[k]], scale)
        ax.set_ylabel(name)
        ax.set_xlabel(_scaled(ctx.names[0], scale))
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Best {ctx.names[0]} per choice (blue; grey: every trial)")
    return fig


def _pad_to_data(ax: Any, values: Sequence[float], scale: str) -> None:
    """The x axis spans ``values`` with a small margin (in log space on a log axis)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    if scale == "log":
        lo, hi = math.log10(min(finite)), math.log10(max(finite))
        pad = (hi - lo) * 0.15 or 0.1
        ax.set_xlim(10 ** (lo - pad), 10 ** (hi + pad))
        return
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.02 or 0.1
    ax.set_xlim(lo - pad, hi + pad)


def _plot_by_source(ctx: _Context) -> Any:
    if not any(SOURCE in t.user_attrs for t in ctx.trials):
        raise _Skip("no trial records a proposal source (hpo:source)")
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    order = ["baseline", "llm", "repaired", "clamped", "fallback", "unknown"]
    groups: dict[str, list[float]] = {}
    for t in ctx.complete:
        groups.setdefault(_source(t), []).append(t.values[0])
    keys = sorted(groups, key=lambda s: (order.index(s) if s in order else len(order), s))
    failed = {s: sum(1 for t in ctx.trials if _source(t) == s and t.state == TrialState.FAIL)
              for s in keys}
    fig, (ax,) = _figure(1, width=7.0, height=4.2)
    ax.boxplot([groups[k] for k in keys], positions=range(len(keys)), widths=0.5,
               showfliers=False)
    rng = random.Random(0)
    for x, k in enumerate(keys):
        ax.scatter([x + rng.uniform(-0.12, 0.12) for _ in groups[k]], groups[k],
                   color=_source_color(k), s=22, zorder=3)
    ax.set_xticks(range(len(keys)),
                  [f"{k}\nn={len(groups[k])}" + (f", {failed[k]} failed" if failed[k] else "")
                   for k in keys], fontsize=8)
    scale = axis_scale([t.values[0] for t in ctx.complete])
    ax.set_yscale(scale)
    ax.set_ylabel(_scaled(ctx.names[0], scale))
    ax.set_title("Objective by proposal source (LLM vs fallback)")
    ax.grid(alpha=0.3, axis="y")
    return fig


def _plot_tokens_cost(ctx: _Context) -> Any:
    with_tokens = [t for t in sorted(ctx.trials, key=lambda t: t.number)
                   if _tokens(t) is not None or COST_USD in t.user_attrs]
    if not with_tokens:
        raise _Skip("no trial records LLM tokens (all proposals came without an LLM)")
    numbers = [t.number for t in with_tokens]
    t_in = [int(t.user_attrs.get(TOKENS_IN) or 0) for t in with_tokens]
    t_out = [int(t.user_attrs.get(TOKENS_OUT) or 0) for t in with_tokens]
    costs = [float(t.user_attrs.get(COST_USD) or 0.0) for t in with_tokens]
    fig, (ax,) = _figure(1, width=8.0, height=4.2)
    ax.bar(numbers, t_in, color="#1f77b4", label="tokens in")
    ax.bar(numbers, t_out, bottom=t_in, color="#aec7e8", label="tokens out")
    ax.set_xlabel("trial")
    _integer_ticks(ax, numbers)
    ax.set_ylabel("tokens")
    cum = 0.0
    cumulative = []
    for c in costs:
        cum += c
        cumulative.append(cum)
    ax2 = ax.twinx()
    ax2.plot(numbers, cumulative, color="#d62728", marker="o", markersize=3,
             label="cumulative cost")
    ax2.set_ylabel("cumulative cost (USD)")
    total = ctx.study.user_attrs.get(COST_USD_TOTAL)
    title = "LLM tokens and cost per trial"
    if total is not None:
        title += f" (study total ${float(total):.4f})"
    ax.set_title(title)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper left")
    return fig


def _plot_pareto(ctx: _Context) -> Any:
    if len(ctx.names) < 2:
        raise _Skip("single-objective study")
    if not ctx.complete:
        raise _Skip("no complete trial yet")
    front = {t.number for t in _pareto(ctx.study, ctx.complete)}
    n = len(ctx.names)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)][:3]
    fig, axes = _figure(len(pairs), width=5.4, height=4.4)
    for ax, (i, j) in zip(axes, pairs, strict=True):
        rest = [t for t in ctx.complete if t.number not in front]
        best = sorted((t for t in ctx.complete if t.number in front), key=lambda t: t.values[i])
        ax.scatter([t.values[i] for t in rest], [t.values[j] for t in rest], color="#aec7e8",
                   s=22, label="dominated")
        ax.scatter([t.values[i] for t in best], [t.values[j] for t in best], color="#d62728",
                   s=34, label="Pareto front", zorder=3)
        if n == 2:
            ax.plot([t.values[i] for t in best], [t.values[j] for t in best], color="#d62728",
                    linewidth=1, zorder=2)
        for t in best:
            ax.annotate(f"#{t.number}", (t.values[i], t.values[j]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        d = ctx.study.directions
        xscale = axis_scale([t.values[i] for t in ctx.complete])
        yscale = axis_scale([t.values[j] for t in ctx.complete])
        ax.set_xscale(xscale)
        ax.set_yscale(yscale)
        ax.set_xlabel(_scaled(f"{ctx.names[i]} ({_dir_word([d[i]])})", xscale))
        ax.set_ylabel(_scaled(f"{ctx.names[j]} ({_dir_word([d[j]])})", yscale))
        ax.grid(alpha=0.3, which="both" if "log" in (xscale, yscale) else "major")
        ax.legend(fontsize=8)
    axes[0].set_title(f"Pareto front ({len(front)} trial{'s' * (len(front) != 1)} of "
                      f"{len(ctx.complete)})")
    return fig


_PLOTTERS: dict[str, Callable[[_Context], Any]] = {
    "history": _plot_history,
    "importances": _plot_importances,
    "parallel_coordinates": _plot_parallel,
    "learning_curves": _plot_learning_curves,
    "params_vs_objective": _plot_params_vs_objective,
    "best_by_choice": _plot_best_by_choice,
    "by_source": _plot_by_source,
    "tokens_cost": _plot_tokens_cost,
    "pareto_front": _plot_pareto,
}


@dataclass(kw_only=True)
class _Context:
    study: optuna.Study
    trials: list[FrozenTrial]
    names: list[str]
    top_k: int
    complete: list[FrozenTrial] = field(init=False)
    ranked_complete: list[FrozenTrial] = field(init=False)
    params: list[str] = field(init=False)
    distributions: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.complete = [t for t in self.trials if t.state == TrialState.COMPLETE and t.values
                         and all(v is not None and math.isfinite(v) for v in t.values)]
        self.ranked_complete = _ranked(self.study, self.complete)
        self.params = _param_names(self.trials)
        self.distributions = {}
        for t in self.trials:  # the latest trial's distribution wins
            self.distributions.update(t.distributions)


# ---------------------------------------------------------------------------- report


def build_report(study: optuna.Study, out_dir: Path, *, top_k: int = 5) -> Report:
    """Write the leaderboard, the plots and ``report.html`` of ``study`` into ``out_dir``.

    Args:
        study: The study (read only).
        out_dir: The report's directory (created when missing; files in it are replaced).
        top_k: How many of the best trials the learning-curves plot overlays.

    Returns:
        The paths written and the plots skipped, with reasons.

    Raises:
        ValueError: ``top_k`` is smaller than 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k!r} is invalid: use an integer >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    names = objective_names(study)
    rows = leaderboard_rows(study)
    columns = ["rank", "number", "state", *names, *(["pareto"] if len(names) > 1 else []),
               *(f"params_{p}" for p in _param_names(trials)), "source", "tokens", "cost_usd",
               "duration_s", "rationale", "error"]
    leaderboard = out_dir / "leaderboard.csv"
    _write_csv(rows, leaderboard, columns)

    ctx = _Context(study=study, trials=list(trials), names=names, top_k=top_k)
    plots: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, plotter in _PLOTTERS.items():
        if name == "pareto_front" and len(names) < 2:
            continue
        path = out_dir / f"{name}.png"
        try:
            fig = plotter(ctx)
        except _Skip as why:
            skipped[name] = str(why)
            path.unlink(missing_ok=True)  # no stale plot from an earlier report
            log.info("report: %s skipped: %s", name, why)
            continue
        except Exception as exc:  # one broken plot must not cost the whole report
            skipped[name] = f"failed: {type(exc).__name__}: {first_line(exc)}"
            path.unlink(missing_ok=True)
            log.warning("report: %s failed: %s", name, first_line(exc), exc_info=True)
            continue
        fig.savefig(path, dpi=110)
        plots[name] = path
    report = Report(out_dir=out_dir, leaderboard=leaderboard, html=out_dir / "report.html",
                    plots=plots, skipped=skipped)
    report.html.write_text(_html(study, ctx, rows, columns, report), encoding="utf-8")
    return report


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _study_note(study: optuna.Study) -> str | None:
    try:
        from optuna_dashboard import get_note

        return get_note(study) or None
    except Exception:
        return None


def _html(study: optuna.Study, ctx: _Context, rows: Sequence[dict[str, Any]],
          columns: Sequence[str], report: Report) -> str:
    e = html.escape
    counts: dict[str, int] = {}
    for t in ctx.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary: list[tuple[str, str]] = [
        ("study", study.study_name),
        ("objective", ", ".join(f"{n} ({w})" for n, w in zip(
            ctx.names, _dir_word(study.directions).split(", "), strict=True))),
        ("trials", ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "none"),
    ]
    if ctx.ranked_complete:
        if len(ctx.names) == 1:
            best = ctx.ranked_complete[0]
            summary.append(("best", f"#{best.number}: {ctx.names[0]}={best.values[0]:.6g}  "
                                    + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())))
        else:
            summary.append(("Pareto front", ", ".join(
                f"#{t.number}" for t in _pareto(study, ctx.complete))))
    attrs = study.user_attrs
    if LLM_CALLS_TOTAL in attrs or COST_USD_TOTAL in attrs:
        tokens = int(attrs.get(TOKENS_IN_TOTAL) or 0) + int(
            attrs.get(TOKENS_OUT_TOTAL) or 0)
        summary.append(("LLM", f"{int(attrs.get(LLM_CALLS_TOTAL) or 0)} calls, "
                               f"{tokens:,} tokens, "
                               f"${float(attrs.get(COST_USD_TOTAL) or 0.0):.4f}, "
                               f"{int(attrs.get(FALLBACK_TOTAL) or 0)} fallback trials"))
    sources: dict[str, int] = {}
    for t in ctx.trials:
        if SOURCE in t.user_attrs:
            sources[_source(t)] = sources.get(_source(t), 0) + 1
    if sources:
        summary.append(("sources", ", ".join(f"{k}: {v}" for k, v in sorted(sources.items()))))
        summary.append(("proposals", llm_share_summary(study)))
    summary.append(("generated", datetime.now().strftime("%Y-%m-%d %H:%M:%S")))

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpo report: {e(study.study_name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:left;vertical-align:top}th{background:#f0f0f0}"
        "td.text{min-width:24em}"
        "tr.best td{background:#eaf6ea}img{max-width:100%;border:1px solid #ddd;margin:6px 0}"
        "dt{font-weight:bold;float:left;width:9em}dd{margin-left:10em}"
        "pre{white-space:pre-wrap;background:#f7f7f7;padding:8px}"
        "p.skipped{color:#555;font-style:italic}"
        ".lb{overflow-x:auto}</style></head><body>",
        f"<h1>hpo report: {e(study.study_name)}</h1>", "<h2>Summary</h2><dl>",
    ]
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in summary]
    parts.append("</dl>")
    note = _study_note(study)
    if note:
        parts += ["<h2>Study note (diagnosis)</h2>", f"<pre>{e(note)}</pre>"]
    parts += ["<h2>Leaderboard</h2>", '<div class="lb"><table id="leaderboard"><thead><tr>']
    parts += [f"<th>{e(c.removeprefix('params_'))}</th>" for c in columns]
    parts.append("</tr></thead><tbody>")
    for row in rows:
        cls = ' class="best"' if row.get("rank") == 1 else ""
        cells = []
        for c in columns:
            text = _fmt(row.get(c, ""))
            if c in ("rationale", "error") and len(text) > _RATIONALE_HTML_CHARS:
                cells.append(f'<td class="text" title="{e(text)}">'
                             f"{e(text[:_RATIONALE_HTML_CHARS - 1])}…</td>")
            elif c in ("rationale", "error"):
                cells.append(f'<td class="text">{e(text)}</td>')
            else:
                cells.append(f"<td>{e(text)}</td>")
        parts.append(f'<tr{cls} data-number="{row["number"]}">' + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div><h2>Plots</h2>")
    titles = {
        "history": "Optimization history", "importances": "Hyperparameter importances",
        "parallel_coordinates": "Parallel coordinates", "learning_curves": "Learning curves",
        "params_vs_objective": "Hyperparameters vs objective",
        "best_by_choice": "Best per model choice (and other categorical parameters)",
        "by_source": "LLM vs fallback", "tokens_cost": "Tokens and cost",
        "pareto_front": "Pareto front",
    }
    for name in _PLOTTERS:  # in order; a plot not drawn says why in its place
        if name in report.plots:
            data = base64.b64encode(report.plots[name].read_bytes()).decode("ascii")
            parts += [f"<h3>{e(titles.get(name, name))}</h3>",
                      f'<img alt="{e(name)}" src="data:image/png;base64,{data}">']
        elif name in report.skipped:
            parts += [f"<h3>{e(titles.get(name, name))}</h3>",
                      f'<p class="skipped" data-plot="{e(name)}">Not drawn: '
                      f"{e(report.skipped[name])}.</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)




# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpo.report``: write a study's report; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m hpo.report",
        description="Write a study's leaderboard.csv, plots and a self-contained report.html.",
    )
    parser.add_argument("--storage", required=True,
                        help="storage URL, e.g. sqlite:///outputs/hpo.db")
    parser.add_argument("--study", default=None,
                        help="study name (default: the storage's only or latest study)")
    parser.add_argument("--out", default="report", help="output directory (default: report)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="trials overlaid in the learning curves (default: 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.top_k < 1:
            raise ConfigError(f"--top-k {args.top_k} is invalid: use an integer >= 1")
        study = load_study(args.storage, args.study)
        report = build_report(study, Path(args.out), top_k=args.top_k)
    except (HPOError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(report.plots)
    print(f"report of study {study.study_name!r}: {report.html} "
          f"({n} plot{'s' * (n != 1)}, leaderboard {report.leaderboard})")
    for name, why in report.skipped.items():
        print(f"  {name}: skipped ({why})")
    if any(SOURCE in t.user_attrs for t in study.get_trials(deepcopy=False)):
        print(f"proposals: {llm_share_summary(study)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
