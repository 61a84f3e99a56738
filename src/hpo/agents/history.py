"""Compact, bounded rendering of a study's history for prompts, with anonymization.

The rendered text has a fixed shape whatever the number of trials: summary statistics, per-param
ranges tried, the best k trials, the k most recent ones and every running trial (params only,
so nothing is proposed twice; capped at ``max_running``). One line per trial; every field a line
uses is explained by :data:`HISTORY_LEGEND`, which the prompts show beside the history.
Log-scale values are followed by their log10 in brackets (``lr=0.001[-3]``); per-class scores
are trimmed to the informative classes (the weakest, and the one that moved most against the
best trial), with a count of what was left out.

Everything that comes from storage and is not a number or a search-space value (metric names,
class names, notes such as a failure reason, task context) is data: it is anonymized, truncated
and rendered as a quoted JSON string with ``<`` and ``>`` escaped, so that it can neither close
the surrounding ``<history>`` block nor read as an instruction.
"""

from __future__ import annotations

import heapq
import json
import math
import operator
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.agents.features import fold_summary, per_class_summary, trial_features
from hpo.attrs import ERROR, SOURCE
from hpo.space import ParamSpec

__all__ = [
    "HISTORY_LEGEND",
    "Anonymizer",
    "HistoryOptions",
    "estimate_tokens",
    "quote",
    "render_context",
    "render_history",
    "render_trial_line",
]

HISTORY_LEGEND = (
    "#N STATE = trial number and state (PRUNED: stopped early by the pruner); src = where its "
    "params came from (baseline: the config defaults, llm, repaired, clamped, fallback: the "
    "classical sampler); then the objective values and the params, as one row in the order "
    "the 'trial rows' line gives; v[x] = a log-scale value v and its log10 x; steps = "
    "intermediate values reported (one per epoch); last = the last one; best=v@s = the best "
    "of them, v, reached at step s (shown when it came before the last step); gap = the "
    "generalization gap at the last epoch (val minus train for a loss, train minus val for a "
    "score: above 0 the validation is worse); flags = curve problems found by rules; "
    "per_class = per-class scores, trimmed as the 'per_class notes' line says; folds = "
    "cross-validation folds; note = a recorded message such as a failure reason."
)

_PATH_RE = re.compile(r"(?<![\w/.~])(?:~|[A-Za-z]:)?[/\\](?:[\w.\-~]+[/\\])+[\w.\-~]*")


def estimate_tokens(text: str) -> int:
    """A rough token count (characters / 4), good enough for budgets and bounds."""
    return (len(text) + 3) // 4


def quote(value: Any, *, max_chars: int = 120) -> str:
    """``value`` as a truncated JSON string literal that cannot break out of a data block.

    Control characters are escaped by JSON; ``<`` and ``>`` become ``\\u003c``/``\\u003e`` so that
    a stored ``</history>`` stays inert text.
    """
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split())  # one line, no layout tricks
    if len(text) > max_chars:
        text = text[: max(max_chars - 1, 1)] + "…"
    return (
        json.dumps(text, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
    )


def _loose(term: str) -> str:
    """A pattern for ``term`` that also matches its spelling variants.

    ``CIFAR10`` matches ``cifar-10``, ``cifar_10`` and ``CIFAR 10``; ``fashion_mnist`` matches
    ``FashionMNIST``. The match must not sit inside a longer alphanumeric word (``cifar100``).
    """
    parts = re.findall(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9\s_.\-]+", term)
    if not parts:
        return re.escape(term)
    body = r"[-_\s.]?".join(re.escape(p) for p in parts)
    return rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])"


class Anonymizer:
    """Replaces caller-named sensitive strings with neutral tokens in rendered free text.

    Parameter names and search-space values are never anonymized (the LLM needs them to
    propose); everything else rendered from storage or context goes through :meth:`apply`.
    Matching is case-insensitive, longest string first, and tolerant of separators
    (``CIFAR10`` also hides ``cifar-10``). With ``enabled`` the anonymizer also
    replaces absolute file-system paths by ``[path]``.

    Args:
        mapping: Sensitive string -> neutral token, e.g. ``{"cifar10": "dataset_1"}``.
        enabled: False turns every replacement off (the opt-out).
    """

    def __init__(self, *, mapping: Mapping[str, str] | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.mapping = {str(k): str(v) for k, v in (mapping or {}).items() if str(k).strip()}
        keys = sorted(self.mapping, key=len, reverse=True)
        # One named group per key, so that a match maps back to its token.
        self._tokens = [self.mapping[k] for k in keys]
        self._re = (
            re.compile(
                "|".join(f"(?P<k{i}>{_loose(k)})" for i, k in enumerate(keys)), re.IGNORECASE
            )
            if keys
            else None
        )

    @classmethod
    def from_names(
        cls,
        *,
        dataset: str | None = None,
        models: Iterable[str] = (),
        study: str | None = None,
        paths: Iterable[str] = (),
        extra: Mapping[str, str] | None = None,
        enabled: bool = True,
    ) -> Anonymizer:
        """An anonymizer for the usual sensitive names.

        Args:
            dataset: The dataset name (becomes ``dataset_1``).
            models: Model names (``model_1``, ``model_2``, ...).
            study: The study name (``study_1``).
            paths: Project paths (``path_1``, ...).
            extra: Further string -> token pairs.
            enabled: False turns anonymization off.
        """
        mapping: dict[str, str] = {}
        if dataset:
            mapping[dataset] = "dataset_1"
        for i, m in enumerate(dict.fromkeys(m for m in models if m), start=1):
            mapping.setdefault(m, f"model_{i}")
        if study:
            mapping.setdefault(study, "study_1")
        for i, p in enumerate(dict.fromkeys(p for p in paths if p), start=1):
            mapping.setdefault(p, f"path_{i}")
        mapping.update(extra or {})
        return cls(mapping=mapping, enabled=enabled)

    def apply(self, text: str) -> str:
        """``text`` with every sensitive string replaced (unchanged when disabled)."""
        if not self.enabled:
            return text
        if self._re is not None:
            text = self._re.sub(lambda m: self._tokens[int(str(m.lastgroup)[1:])], text)
        return _PATH_RE.sub("[path]", text)


@dataclass(frozen=True)
class HistoryOptions:
    """How much history a prompt shows.

    Attributes:
        best_k: Best trials listed (Pareto-front trials for several objectives).
        recent_k: Most recent finished trials listed (not already among the best).
        max_running: Cap on the running trials listed (a note says how many were left out).
        max_text_chars: Truncation of every free-text string rendered.
        note_attrs: User attrs rendered as quoted notes when present (the sweeper's failure
            reason ``hpo:error``).
        source_attr: User attr naming where a trial's params came from (the sampler's
            ``hpo:source``: baseline, llm, fallback, ...), rendered as ``src=...``; None: not.
        max_choices: Categorical choices listed per param in the ranges summary.
        per_class_k: Weakest classes named per trial (of the first per-class metric); the class
            that moved most against the best trial is added, the rest only counted.
    """

    best_k: int = 8
    recent_k: int = 8
    max_running: int = 64
    max_text_chars: int = 120
    note_attrs: tuple[str, ...] = (ERROR, "fail_reason")
    source_attr: str | None = SOURCE
    max_choices: int = 16
    per_class_k: int = 2

    def __post_init__(self) -> None:
        for name in ("best_k", "recent_k", "max_running", "max_text_chars", "max_choices",
                     "per_class_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"history.{name}={value!r} is invalid: use an integer >= 0")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> HistoryOptions:
        """Options from a plain dict such as the agent config's ``history`` entry."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"history options {sorted(unknown)} are unknown: use "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        if "note_attrs" in cfg:
            cfg["note_attrs"] = tuple(cfg["note_attrs"])
        return cls(**cfg)


# Significant digits: objective values keep 6 (they rank trials); numeric params, curve values
# and per-class scores fewer (they are read, not compared at the 6th digit, and a tokenizer
# spends one token per digit).
_DIGITS_PARAM = 3
_DIGITS_CURVE = 4
_DIGITS_CLASS = 3


def _fmt_num(v: Any, digits: int = 6) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return quote(v)


def _fmt_param(v: Any, *, numeric: bool = False) -> str:
    """Search-space values, never anonymized: choices verbatim (JSON; strings quoted), values of
    a numeric (float/int) parameter with ``_DIGITS_PARAM`` significant digits."""
    if isinstance(v, str):
        return quote(v, max_chars=200)
    return _fmt_num(v, _DIGITS_PARAM) if numeric else _fmt_num(v)


def _finite_values(t: FrozenTrial) -> list[float] | None:
    vals = t.values
    if vals is None:
        return None
    try:  # math.isfinite in C over the values; it rejects non-numbers with TypeError
        return list(vals) if all(map(math.isfinite, vals)) else None
    except TypeError:
        return None


class _Ctx:
    def __init__(
        self,
        *,
        space: Sequence[ParamSpec],
        directions: Sequence[str],
        objective_names: Sequence[str],
        anonymizer: Anonymizer,
        options: HistoryOptions,
    ) -> None:
        self.space = list(space)
        self.directions = list(directions)
        self.names = list(objective_names) or [f"objective_{i}" for i in range(len(directions))]
        self.anon = anonymizer
        self.opt = options
        self.log_scale = {p.name for p in self.space if getattr(p.distribution, "log", False)}
        self.numeric = {p.name for p in self.space
                        if isinstance(p.distribution, FloatDistribution | IntDistribution)}
        # the best trial's per-class scores: what "moved most" is measured against, and the
        # metric the notes show
        self.reference: tuple[int, Mapping[str, Any]] | None = None
        self.per_class_metric: str | None = None

    def text(self, s: Any) -> str:
        return quote(self.anon.apply(str(s)), max_chars=self.opt.max_text_chars)


def render_trial_line(
    trial: FrozenTrial,
    *,
    space: Sequence[ParamSpec],
    directions: Sequence[str],
    objective_names: Sequence[str],
    anonymizer: Anonymizer | None = None,
    options: HistoryOptions | None = None,
) -> str:
    """One compact line for ``trial`` (values, params, curve features, per-class, folds)."""
    ctx = _Ctx(
        space=space,
        directions=directions,
        objective_names=objective_names,
        anonymizer=anonymizer or Anonymizer(enabled=False),
        options=options or HistoryOptions(),
    )
    return _line(trial, ctx)


def _log10(v: Any) -> str:
    """``"[x]"``: the log10 of a positive number (two decimals at most), else ``""``."""
    if isinstance(v, int | float) and not isinstance(v, bool) and v > 0 and math.isfinite(v):
        x = f"{math.log10(v):.2f}".rstrip("0").rstrip(".")
        return f"[{'0' if x in ('-0', '') else x}]"
    return ""


def _value_text(name: str, value: Any, ctx: _Ctx) -> str:
    text = _fmt_param(value, numeric=name in ctx.numeric)
    return text + _log10(value) if name in ctx.log_scale else text


def _params_text(trial: FrozenTrial, ctx: _Ctx) -> str:
    """The params as a row in search-space order (``-``: not set), then any param outside the
    space as ``name=value``; without a known space, every param as ``name=value``."""
    params = trial.params
    row = [_value_text(p.name, params[p.name], ctx) if p.name in params else "-"
           for p in ctx.space]
    known = {p.name for p in ctx.space}
    row += [f"{n}={_value_text(n, v, ctx)}" for n, v in params.items() if n not in known]
    return ", ".join(row)


def _per_class_text(trial: FrozenTrial, ctx: _Ctx) -> str | None:
    """The first per-class metric, trimmed: mean, weakest k, the class that moved most."""
    table_all = trial.user_attrs.get("per_class")
    summaries = per_class_summary(table_all, k=ctx.opt.per_class_k)
    if not summaries:
        return None
    pc = summaries[0]
    shown = {c for c, _ in pc.weakest}
    ref = ctx.reference
    # the metric is named when it is not the one the 'per_class notes' line names
    named = pc.metric != ctx.per_class_metric
    text = (f"per_class {ctx.text(pc.metric) + ' ' if named else ''}"
            f"mean={_fmt_num(pc.mean, _DIGITS_CLASS)} weakest "
            + ", ".join(f"{ctx.text(c)}={_fmt_num(v, _DIGITS_CLASS)}" for c, v in pc.weakest))
    ref_table = ref[1].get(pc.metric) if ref is not None and ref[0] != trial.number else None
    if isinstance(ref_table, Mapping) and isinstance(table_all, Mapping):
        moved: tuple[float, str, float, float] | None = None
        for c, v in (table_all.get(pc.metric) or {}).items():
            r = ref_table.get(c)
            if str(c) in shown or not _is_num(v) or not _is_num(r):
                continue
            change = float(v) - float(r)
            if math.isfinite(change) and (moved is None or abs(change) > moved[0]):
                moved = (abs(change), str(c), float(v), change)
        if moved is not None and moved[0] > 0:
            shown.add(moved[1])
            text += (f" moved {ctx.text(moved[1])}={_fmt_num(moved[2], _DIGITS_CLASS)}"
                     f"({moved[3]:+.2g})")
    if pc.n_classes > len(shown):
        text += f" +{pc.n_classes - len(shown)} not shown"
    return text


def _per_class_note(ctx: _Ctx) -> str | None:
    """One line saying what the per-class notes show and leave out, or None."""
    if ctx.reference is None or ctx.per_class_metric is None:
        return None
    number, table = ctx.reference
    metrics = [ctx.text(s.metric) for s in per_class_summary(table, k=0)]
    left = f" ({', '.join(metrics[1:])} left out)" if len(metrics) > 1 else ""
    return (f"per_class notes: metric {metrics[0]} only{left}; its mean, the "
            f"{ctx.opt.per_class_k} weakest classes, the class that moved most against "
            f"#{number} (the best trial with per-class scores; change in brackets) and how "
            "many classes are not shown")


def _is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _line(trial: FrozenTrial, ctx: _Ctx) -> str:
    state = trial.state.name
    head = f"#{trial.number} {state}"
    src = trial.user_attrs.get(ctx.opt.source_attr) if ctx.opt.source_attr else None
    if src not in (None, ""):
        head += f" src={quote(src, max_chars=24)}"
    values = ", ".join(_fmt_num(v) for v in trial.values) if trial.values is not None else "-"
    if trial.state == TrialState.RUNNING:
        return f"{head} | {values} | {_params_text(trial, ctx)}"
    segs = [head, values, _params_text(trial, ctx)]
    extras: list[str] = []
    if trial.intermediate_values:
        f = trial_features(trial, ctx.directions[0] if ctx.directions else "minimize")
        curve = f"steps={f.n_steps}"
        if f.last is not None and trial.values is None:
            curve += f" last={_fmt_num(f.last, _DIGITS_CURVE)}"
        if f.best is not None and f.steps_since_best:  # else the best is the last value
            curve += f" best={_fmt_num(f.best, _DIGITS_CURVE)}@{f.best_step}"
        if f.overfit_gap is not None and not f.overfit:
            curve += f" gap={_fmt_num(f.overfit_gap, _DIGITS_CLASS)}"
        flags = f.flags()
        if flags:
            curve += " flags=" + ",".join(flags)
        extras.append(curve)
    attrs = trial.user_attrs
    per_class = _per_class_text(trial, ctx)
    if per_class:
        extras.append(per_class)
    fs = fold_summary(attrs.get("folds"))
    if fs is not None:
        extras.append(
            f"folds n={fs.n} mean={_fmt_num(fs.mean, _DIGITS_CURVE)} "
            f"std={_fmt_num(fs.std, _DIGITS_CURVE)} min={_fmt_num(fs.min, _DIGITS_CURVE)}"
        )
    for key in ctx.opt.note_attrs:
        if key in attrs and attrs[key] not in (None, ""):
            extras.append(f"note {ctx.text(key)}: {ctx.text(attrs[key])}")
    segs.extend(extras)
    return " | ".join(segs)


def _pareto_front(trials: list[FrozenTrial], signs: list[float]) -> list[FrozenTrial]:
    pts = []
    for t in trials:
        v = _finite_values(t)
        if v is not None and len(v) == len(signs):
            pts.append(([s * x for s, x in zip(signs, v, strict=True)], t))
    pts.sort(key=lambda p: p[0])
    front: list[tuple[list[float], FrozenTrial]] = []
    for v, t in pts:
        dominated = any(
            all(a <= b for a, b in zip(f, v, strict=True)) and f != v for f, _ in front
        )
        if not dominated:
            front.append((v, t))
    return [t for _, t in front]


def _best(complete: list[FrozenTrial], ctx: _Ctx, k: int) -> list[FrozenTrial]:
    if k == 0 or not complete:
        return []
    signs = [1.0 if d == "minimize" else -1.0 for d in ctx.directions]
    if len(signs) == 1:
        scored = [(signs[0] * v[0], t.number, t) for t in complete if (v := _finite_values(t))]
        return [t for _, _, t in heapq.nsmallest(k, scored, key=lambda x: (x[0], x[1]))]
    return _pareto_front(complete, signs)[:k]


def _ranges(finished: list[FrozenTrial], best: list[FrozenTrial], ctx: _Ctx) -> list[str]:
    """Per-param ranges tried over finished trials, plus the range among the best trials."""
    # one pass over the trials (FrozenTrial.params is a property: reading it per parameter per
    # trial dominated the render at 10,000 trials); categorical values are counted raw and
    # only the distinct ones are formatted
    rows = [t.params for t in finished]
    names = [spec.name for spec in ctx.space]
    columns: dict[str, list[Any]]
    try:  # the common case, every trial has every parameter: one transpose in C
        getter = operator.itemgetter(*names)
        picked = map(getter, rows) if len(names) > 1 else ((getter(p),) for p in rows)
        columns = dict(zip(names, map(list, zip(*picked, strict=True)), strict=False))
    except KeyError:  # conditional parameters: column by column
        columns = {n: [p[n] for p in rows if n in p] for n in names}
    out: list[str] = []
    for spec in ctx.space:
        name = spec.name
        vals = columns.get(name, [])
        if not vals:
            out.append(f"  {spec.name}: not tried yet")
            continue
        if isinstance(spec.distribution, CategoricalDistribution):
            raw = Counter((type(v).__name__, v) for v in vals)
            counts: Counter[str] = Counter()
            for (_, v), n in raw.items():
                counts[_fmt_param(v)] += n  # choices: verbatim
            shown = counts.most_common(ctx.opt.max_choices)
            txt = ", ".join(f"{c} x{n}" for c, n in shown)
            more = len(counts) - len(shown)
            if more > 0:
                txt += f", +{more} more"
            out.append(f"  {spec.name}: tried {txt}")
            continue
        # Float/Int distributions hold numbers only (Optuna checks them); anything else is
        # filtered the slow way
        numeric = isinstance(spec.distribution, FloatDistribution | IntDistribution)
        nums = vals if numeric else [
            v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if not nums:
            continue
        line = f"  {spec.name}: tried {_span(min(nums), max(nums), name in ctx.log_scale)}"
        if len(nums) < len(finished):  # a conditional parameter: how often it was set
            line += f" (set in {len(nums)} of {len(finished)})"
        top = [
            t.params[spec.name]
            for t in best
            if isinstance(t.params.get(spec.name), int | float)
        ]
        if top:
            line += f"; best trials {_span(min(top), max(top), name in ctx.log_scale)}"
        out.append(line)
    return out


def _span(low: Any, high: Any, log: bool) -> str:
    """``low..high``, with the log10 of each bound in brackets for a log-scale parameter."""
    lo, hi = low, high
    if log:
        return (f"{_fmt_num(lo, _DIGITS_PARAM)}{_log10(lo)}.."
                f"{_fmt_num(hi, _DIGITS_PARAM)}{_log10(hi)}")
    return f"{_fmt_num(lo, _DIGITS_PARAM)}..{_fmt_num(hi, _DIGITS_PARAM)}"


def render_history(
    trials: Sequence[FrozenTrial],
    *,
    space: Sequence[ParamSpec],
    directions: Sequence[str],
    objective_names: Sequence[str] = (),
    anonymizer: Anonymizer | None = None,
    options: HistoryOptions | None = None,
) -> str:
    """The study history as compact text whose size does not grow with the number of trials.

    Args:
        trials: Every trial of the study, including RUNNING and WAITING ones.
        space: The search space (fixes the parameter order in each line).
        directions: ``"minimize"``/``"maximize"``, one per objective.
        objective_names: One name per objective (e.g. ``"val/acc"``).
        anonymizer: Applied to every free-text string; None renders them as stored.
        options: Sizes of the best/recent/running sections.

    Returns:
        Plain text, one line per trial, meant to sit inside a ``<history>`` data block.
    """
    ctx = _Ctx(
        space=space,
        directions=directions,
        objective_names=objective_names,
        anonymizer=anonymizer or Anonymizer(enabled=False),
        options=options or HistoryOptions(),
    )
    by_state: dict[TrialState, list[FrozenTrial]] = {s: [] for s in TrialState}
    for t in trials:
        by_state[t.state].append(t)
    complete = by_state[TrialState.COMPLETE]
    finished = sorted(
        complete + by_state[TrialState.PRUNED] + by_state[TrialState.FAIL],
        key=lambda t: t.number,
    )
    running = sorted(
        by_state[TrialState.RUNNING] + by_state[TrialState.WAITING], key=lambda t: t.number
    )

    lines = [
        f"trials: total={len(trials)} complete={len(complete)} "
        f"pruned={len(by_state[TrialState.PRUNED])} failed={len(by_state[TrialState.FAIL])} "
        f"running={len(running)}"
    ]
    for i, (name, direction) in enumerate(zip(ctx.names, ctx.directions, strict=False)):
        vals = [v[i] for t in complete if (v := _finite_values(t)) and len(v) > i]
        if not vals:
            lines.append(f"objective {ctx.text(name)} ({direction}): no completed trial yet")
            continue
        pick = min if direction == "minimize" else max
        best_v = pick(vals)
        lines.append(
            f"objective {ctx.text(name)} ({direction}): best={_fmt_num(best_v)} "
            f"median={_fmt_num(statistics.median(vals))} "
            f"worst={_fmt_num(max(vals) if pick is min else min(vals))}"
        )

    best = _best(complete, ctx, ctx.opt.best_k)
    ref = next((t for t in best if isinstance(t.user_attrs.get("per_class"), Mapping)), None)
    if ref is not None:
        ctx.reference = (ref.number, ref.user_attrs["per_class"])
        first = per_class_summary(ctx.reference[1], k=0)
        ctx.per_class_metric = first[0].metric if first else None
    if ctx.space:
        lines.append("params tried (finished trials; 'best trials' = range among the best):")
        lines.extend(_ranges(finished, best, ctx))

    if best or finished or running:
        params = (
            "params in this order: " + ", ".join(p.name for p in ctx.space) + " ('-': not set)"
            if ctx.space else "params as name=value"
        )
        lines.append(
            f"trial rows: #N STATE src | {', '.join(ctx.text(n) for n in ctx.names)} ('-': no "
            f"value) | {params} | curve and other notes"
        )
    note = _per_class_note(ctx)
    if note:
        lines.append(note)
    if best:
        label = "pareto front" if len(ctx.directions) > 1 else "best"
        lines.append(f"{label} {len(best)}:")
        lines.extend("  " + _line(t, ctx) for t in best)
    shown = {t.number for t in best}
    recent = [t for t in reversed(finished) if t.number not in shown][: ctx.opt.recent_k]
    if recent:
        lines.append(f"most recent {len(recent)} (newest first, best excluded):")
        lines.extend("  " + _line(t, ctx) for t in recent)
    if running:
        listed = running[: ctx.opt.max_running]
        lines.append(
            f"running {len(running)} (params only; already being evaluated: do not propose "
            "these again):"
        )
        lines.extend("  " + _line(t, ctx) for t in listed)
        if len(running) > len(listed):
            lines.append(f"  ... and {len(running) - len(listed)} more running")
    return "\n".join(lines)


def render_context(context: Mapping[str, str], anonymizer: Anonymizer | None = None, *,
                   max_chars: int = 600) -> str:
    """Task context (e.g. a description) as quoted, anonymized ``key: "value"`` lines."""
    anon = anonymizer or Anonymizer(enabled=False)
    return "\n".join(
        f"{quote(anon.apply(str(k)), max_chars=60)}: "
        f"{quote(anon.apply(str(v)), max_chars=max_chars)}"
        for k, v in context.items()
    )
