"""From runs to figures: regret per (problem, method, budget), LLM use, the goal, plots, docs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import Table, fmt

from quality.problems import Problem
from quality.runner import Job, Run
from quality.stats import (
    best_so_far,
    bootstrap_diff_ci,
    bootstrap_mean_ci,
    normalized_regret,
)

LLM_SOURCES = ("llm", "repaired", "clamped")
GOAL_DELTA = 0.01  # issue 12, goal 6: an adversarial LLM within 0.01 of TPE at 50 trials
REFERENCE = "tpe"
DOCS_BLOCK = "bench_quality"  # the markers <!-- bench_quality:begin --> ... :end -->


@dataclass
class Curves:
    """Normalized regret after each trial, one row per seed, for one (problem, method)."""

    problem: str
    method: str
    llm: bool
    regret: np.ndarray  # (seeds, n_trials)
    runs: list[Run]


def reference_range(problem: Problem, runs: Sequence[Run]) -> tuple[float, float, str]:
    """``(optimum, worst, how)``: the problem's bounds, or what the runs observed."""
    if problem.optimum is not None and problem.worst is not None:
        return problem.optimum, problem.worst, "exact"
    seen = [v for r in runs for v in r.values if v is not None and math.isfinite(v)]
    if not seen:
        raise ValueError(f"no successful trial on {problem.name}: nothing to normalize by")
    lo, hi = min(seen), max(seen)
    optimum, worst = (lo, hi) if problem.direction == "minimize" else (hi, lo)
    return (problem.optimum if problem.optimum is not None else optimum,
            problem.worst if problem.worst is not None else worst, "observed")


def curves(problems: dict[str, Problem], methods: dict[str, bool],
           runs: dict[Job, Run]) -> tuple[list[Curves], dict[str, tuple[float, float, str]]]:
    """Regret curves per (problem, method), and each problem's reference range."""
    out: list[Curves] = []
    ranges: dict[str, tuple[float, float, str]] = {}
    for pname, problem in problems.items():
        pruns = [r for j, r in runs.items() if j.problem == pname]
        optimum, worst, how = reference_range(problem, pruns)
        ranges[pname] = (optimum, worst, how)
        for mname, llm in methods.items():
            mruns = sorted((r for j, r in runs.items()
                            if j.problem == pname and j.method == mname),
                           key=lambda r: r.job["seed"])
            if not mruns:
                continue
            regret = np.stack([
                normalized_regret(best_so_far(r.values, problem.direction, worst), optimum,
                                  worst)
                for r in mruns
            ])
            out.append(Curves(pname, mname, llm, regret, mruns))
    return out, ranges


def regret_table(all_curves: list[Curves], budgets: Sequence[int]) -> Table:
    """Every (problem, method, budget): mean normalized regret, CI, difference to TPE."""
    t = Table("Search quality: mean normalized regret after b trials (95 % bootstrap CI)",
              ["problem", "method", "budget", "seeds", "regret", "CI low", "CI high",
               "vs tpe", "vs tpe_seeded"])
    by_key = {(c.problem, c.method): c for c in all_curves}
    for c in all_curves:
        for b in budgets:
            mean, low, high = bootstrap_mean_ci(c.regret[:, b - 1])
            deltas = []
            for ref in (REFERENCE, "tpe_seeded"):
                other = by_key.get((c.problem, ref))
                deltas.append(None if other is None or ref == c.method else
                              _signed(float(mean) - float(other.regret[:, b - 1].mean())))
            t.add(c.problem, c.method, b, c.regret.shape[0], _r(mean), _r(low), _r(high),
                  *deltas)
    t.notes += [
        "regret: |best after b trials - optimum| / |worst - optimum|, 0 = the optimum, "
        "1 = the worst value (see the ranges table); mean over seeds",
        "vs tpe / vs tpe_seeded: this method's mean regret minus theirs (negative = better)",
        "budgets are prefixes of one study per seed (anytime regret)",
    ]
    return t


def regret_wide_table(all_curves: list[Curves], budgets: Sequence[int]) -> Table:
    """The regret table for the docs: one row per (problem, method), one column per budget."""
    t = Table("Mean normalized regret [95 % bootstrap CI] after b trials",
              ["problem", "method", *(f"b={b}" for b in budgets)])
    for c in all_curves:
        cells = []
        for b in budgets:
            mean, low, high = bootstrap_mean_ci(c.regret[:, b - 1])
            cells.append(f"{fmt(float(mean))} [{fmt(float(low))}, {fmt(float(high))}]")
        t.add(c.problem, c.method, *cells)
    t.notes.append("the same figures as the long table printed by the script, which also has "
                   "each method's difference to TPE and seeded TPE")
    return t


def llm_table(all_curves: list[Curves]) -> Table:
    """LLM requests, tokens and cost per run, and where the trials came from."""
    t = Table("LLM use per run (mean over seeds)",
              ["problem", "method", "runs", "trials", "LLM calls", "tokens in", "tokens out",
               "cost $", "LLM trials", "seed trials", "classical trials", "sampler s/trial"])
    for c in all_curves:
        runs = c.runs
        n = len(runs)
        trials = sum(len(r.values) for r in runs)
        src = [s for r in runs for s in r.sources]
        llm_share = sum(s in LLM_SOURCES for s in src) / max(1, len(src))
        seeded = sum(s in ("baseline", "enqueued") for s in src) / max(1, len(src))
        classical = max(0.0, 1.0 - llm_share - seeded)
        sampler_s = sum(r.wall_s - r.eval_s for r in runs) / max(1, trials)
        t.add(c.problem, c.method, n, trials // max(1, n),
              _r(sum(r.llm["calls"] for r in runs) / n, 1),
              round(sum(r.llm["tokens_in"] for r in runs) / n),
              round(sum(r.llm["tokens_out"] for r in runs) / n),
              _r(sum(r.llm["cost_usd"] for r in runs) / n, 4),
              _pct(llm_share), _pct(seeded), _pct(classical), _r(sampler_s, 3))
    t.notes += [
        "LLM calls: requests to the LLM (every role: analyst, proposer, repair); tokens and "
        "cost as hpo's study totals count them (hpo:*_total); the adversarial LLM's tokens are "
        "the fake server's estimate (characters / 4), priced at gpt-4o-mini's rates",
        "LLM trials: trials whose hpo:source is llm, repaired or clamped; seed trials: the "
        "default configuration (hpo's baseline, tpe_seeded's enqueued trial); classical "
        "trials: the rest (a classical sampler's: TPE fallback, hybrid leader, the method)",
        "sampler s/trial: study wall time minus the problem's evaluations, per trial",
    ]
    return t


def goal_table(all_curves: list[Curves], budget: int) -> Table:
    """Issue 12 goal 6: each LLM method within 0.01 of TPE's regret at ``budget`` trials."""
    t = Table(f"Goal: an LLM method's regret within {GOAL_DELTA} of TPE's at {budget} trials",
              ["problem", "method", "regret", "tpe", "tpe_seeded", "cmaes", "difference",
               "diff CI low", "diff CI high", "x tpe", "met"])
    by_key = {(c.problem, c.method): c for c in all_curves}

    def mean_of(problem: str, method: str) -> float | None:
        c = by_key.get((problem, method))
        return None if c is None else float(c.regret[:, budget - 1].mean())

    for c in all_curves:
        ref = by_key.get((c.problem, REFERENCE))
        if not c.llm or ref is None:
            continue
        a, b = c.regret[:, budget - 1], ref.regret[:, budget - 1]
        diff, low, high = bootstrap_diff_ci(a, b)
        ratio = float(a.mean() / b.mean()) if b.mean() > 0 else None
        t.add(c.problem, c.method, _r(a.mean()), _r(b.mean()),
              mean_of(c.problem, "tpe_seeded"), mean_of(c.problem, "cmaes"),
              _signed(diff), _signed(low), _signed(high), ratio, diff <= GOAL_DELTA)
    t.notes += [f"met: mean regret at most {GOAL_DELTA} above TPE's (the difference's CI "
                "shows how sure that is)",
                "x tpe: the LLM method's mean regret over TPE's"]
    return t


def _diff_cell(a: np.ndarray, b: np.ndarray) -> str:
    diff, low, high = bootstrap_diff_ci(a, b)
    return f"{_signed(diff)} [{_signed(low)}, {_signed(high)}]"


def damage_table(all_curves: list[Curves], budgets: Sequence[int]) -> Table:
    """Damage before damage control reacts: each LLM method against TPE at the early budgets,
    where its trials came from in each stretch of the study, and when the bandit cut its share.
    """
    early = list(budgets[:-1]) or list(budgets)
    edges = [0, *budgets]
    spans = [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(edges)]
    t = Table("Damage control: an LLM method against TPE early, and the LLM's share of trials",
              ["problem", "method", *(f"vs tpe b={b} [CI]" for b in early),
               *(f"LLM trials {s}" for s in spans), "share halved at", "p_llm at end"])
    by_key = {(c.problem, c.method): c for c in all_curves}
    for c in all_curves:
        ref = by_key.get((c.problem, REFERENCE))
        if not c.llm or ref is None:
            continue
        diffs = [_diff_cell(c.regret[:, b - 1], ref.regret[:, b - 1]) for b in early]
        shares = []
        for lo, hi in itertools.pairwise(edges):
            src = [s for r in c.runs for s in r.sources[lo:hi]]
            shares.append(_pct(sum(s in LLM_SOURCES for s in src) / max(1, len(src))))
        halved = [_share_halved_at(r.choices) for r in c.runs]
        cut = [h for h in halved if h is not None]
        when = (f"{int(np.median(cut))} ({len(cut)}/{len(halved)} seeds)" if cut
                else f"never (0/{len(halved)})")
        ends = [_last_p_llm(r.choices) for r in c.runs]
        end = [e for e in ends if e is not None]
        t.add(c.problem, c.method, *diffs, *shares, when,
              _r(float(np.mean(end)), 3) if end else None)
    t.notes += [
        "vs tpe: mean regret minus TPE's after b trials, with the 95 % bootstrap CI of the "
        "difference (positive = the LLM method is behind)",
        "LLM trials i-j: share of trials i to j whose hpo:source is llm, repaired or clamped",
        "share halved at: the trial (median over the seeds where it happened) from which the "
        "LLM's share (hpo:source_choice p_llm) is at most half of its first value; "
        "p_llm at end: its value at the last trial, mean over seeds",
    ]
    return t


def _share_halved_at(choices: Sequence[dict[str, Any] | None]) -> int | None:
    """1-based trial number from which ``p_llm`` is at most half its first drawn value."""
    drawn = [(i, float(c["p_llm"])) for i, c in enumerate(choices)
             if c is not None and c.get("draw") is not None]
    if not drawn or drawn[0][1] <= 0:
        return None
    first = drawn[0][1]
    for i, p in drawn:
        if p <= first / 2:
            return i + 1
    return None


def _last_p_llm(choices: Sequence[dict[str, Any] | None]) -> float | None:
    for c in reversed(choices):
        if c is not None:
            return float(c["p_llm"])
    return None


def versus_table(all_curves: list[Curves], budgets: Sequence[int],
                 scripted: Sequence[str]) -> Table:
    """Issue 12 goal 6 (b, c): each real LLM's modes against seeded TPE and CMA-ES."""
    t = Table("Real LLMs against seeded TPE and CMA-ES",
              ["problem", "method", "budget", "seeds", "regret [CI]", "tpe_seeded",
               "vs tpe_seeded [CI]", "cmaes", "vs cmaes [CI]", "tpe"])
    by_key = {(c.problem, c.method): c for c in all_curves}
    for c in all_curves:
        if not c.llm or c.method.partition("/")[2] in scripted:
            continue
        for b in budgets:
            mean, low, high = bootstrap_mean_ci(c.regret[:, b - 1])
            cells: list[Any] = []
            for ref in ("tpe_seeded", "cmaes"):
                other = by_key.get((c.problem, ref))
                if other is None:
                    cells += [None, None]
                    continue
                cells += [_r(other.regret[:, b - 1].mean()),
                          _diff_cell(c.regret[:, b - 1], other.regret[:, b - 1])]
            tpe = by_key.get((c.problem, REFERENCE))
            t.add(c.problem, c.method, b, c.regret.shape[0],
                  f"{fmt(float(mean))} [{fmt(float(low))}, {fmt(float(high))}]", *cells,
                  None if tpe is None else _r(tpe.regret[:, b - 1].mean()))
    t.notes.append("vs ...: the LLM method's mean regret minus the other's, 95 % bootstrap CI "
                   "of the difference (negative = the LLM method is ahead)")
    return t


def ranges_table(problems: dict[str, Problem],
                 ranges: dict[str, tuple[float, float, str]]) -> Table:
    """The problems, their spaces, and the range regret is normalized by."""
    t = Table("Problems and their regret range",
              ["problem", "kind", "params", "direction", "objective", "optimum", "worst",
               "range", "seed config"])
    for name, p in problems.items():
        optimum, worst, how = ranges[name]
        seed_value = p.evaluate(p.defaults).value
        t.add(name, p.kind, len(p.space), p.direction, p.objective, _r(optimum, 6),
              _r(worst, 6), how, _r(seed_value, 6))
    t.notes.append("range exact: the box's optimum and worst (synthetic) or the table's "
                   "(tabulated); observed: the best and worst value any run of this report "
                   "saw (scikit-learn, optimum unknown)")
    return t


def plot(all_curves: list[Curves], budgets: Sequence[int], path: Path, title: str) -> None:
    """Mean normalized regret per trial with 95 % bootstrap bands, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    problems = list(dict.fromkeys(c.problem for c in all_curves))
    ncols = min(3, len(problems))
    nrows = math.ceil(len(problems) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    methods = list(dict.fromkeys(c.method for c in all_curves))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, pname in zip(axes, problems, strict=False):
        for c in (c for c in all_curves if c.problem == pname):
            mean, low, high = bootstrap_mean_ci(c.regret, n=500)
            x = np.arange(1, c.regret.shape[1] + 1)
            style = "--" if c.llm else "-"
            ax.plot(x, mean, style, color=colors[c.method], label=c.method, lw=1.6)
            ax.fill_between(x, low, high, color=colors[c.method], alpha=0.12, lw=0)
        for b in budgets:
            ax.axvline(b, color="0.8", lw=0.8, zorder=0)
        ax.set_title(pname)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("trials")
        ax.set_ylabel("normalized regret")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(problems):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_docs(doc: Path, block: str, name: str = DOCS_BLOCK) -> None:
    """Replace the text between the ``<!-- <name>:begin -->`` and ``<!-- <name>:end -->``
    markers of ``doc`` with ``block``.

    Raises:
        ValueError: The markers are missing (the message says where to add them).
    """
    text = doc.read_text()
    start, end = _block(doc, text, name)
    doc.write_text(text[:start] + "\n" + block.rstrip() + "\n" + text[end:])


def check_docs(doc: Path, name: str = DOCS_BLOCK) -> None:
    """Check that ``doc`` has the marker pair :func:`write_docs` fills (before any run).

    Raises:
        ValueError: The markers are missing (the message says where to add them).
    """
    _block(doc, doc.read_text(), name)


def _block(doc: Path, text: str, name: str) -> tuple[int, int]:
    """Where the text between the markers starts and ends."""
    begin, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{doc} has no {begin} ... {end_marker} block: add the two marker "
                         "lines where the figures go")
    return start + len(begin), end


def _r(x: Any, digits: int | None = None) -> float:
    """A plain float (the table prints 3 significant digits), rounded when ``digits``."""
    return float(x) if digits is None else float(round(float(x), digits))


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"
