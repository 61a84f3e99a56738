"""Prompt values rendered from a :class:`~hpo.agents.chain.StudyView`: what the LLM sees.

Every role's template is filled from :func:`prompt_values` (objectives, task context, budget and
fidelity, search space, history and its legend, the hybrid optimizer's state) plus the blocks the
stages add (diagnosis, remedies, advice). :func:`rule_diagnosis` is the deterministic reading of
the learning curves that reaches every stage. Everything from storage or the user is data:
quoted or escaped so that it cannot open or close a block.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo.agents.features import conclusive_verdict, trial_features
from hpo.agents.history import (
    HISTORY_LEGEND,
    Anonymizer,
    HistoryOptions,
    quote,
    render_context,
    render_history,
)
from hpo.agents.models import Proposal
from hpo.space import ParamSpec

if TYPE_CHECKING:
    from hpo.agents.chain import StudyView

__all__ = ["VERDICT_TEXT", "data_json", "prompt_values", "proposals_json", "rule_diagnosis"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

VERDICT_TEXT: dict[str, str] = {
    "clear_improvement": (
        "Rule verdict: the latest trial clearly improved the best result and "
        "its learning curves show no divergence or overfitting. Refine around it: small steps "
        "on the parameters it changed, keep what worked."
    ),
    "clear_divergence": (
        "Rule verdict: the latest trials diverged (non-finite values or a loss "
        "that ended worse than it started). Move to more stable settings: a lower learning rate, "
        "stronger regularization or gradient-friendly choices; avoid the diverged region."
    ),
}


def _space_json(space: Sequence[ParamSpec]) -> str:
    """The search space as JSON: param name -> bounds, scale (and log10 bounds), choices,
    default, description, and the condition of a conditional parameter (``only_when``)."""
    out: dict[str, Any] = {}
    for p in space:
        d = p.to_prompt_dict()
        dist = p.distribution
        if isinstance(dist, FloatDistribution | IntDistribution) and dist.log and dist.low > 0:
            d["log10"] = [round(math.log10(dist.low), 3), round(math.log10(dist.high), 3)]
        if p.condition is not None:
            d["only_when"] = {p.condition[0]: list(p.condition[1])}
        out[p.name] = d
    blob = json.dumps(out, ensure_ascii=False, separators=(", ", ": "))
    return blob.replace("<", "\\u003c").replace(">", "\\u003e")


def data_json(obj: Any) -> str:
    """LLM- or storage-produced structures as inert JSON inside a data block."""
    blob = json.dumps(obj, ensure_ascii=False, default=str)
    return blob.replace("<", "\\u003c").replace(">", "\\u003e")


def proposals_json(proposals: Sequence[Proposal]) -> str:
    """Proposals (rationale first, as replies give them) as inert JSON for a data block."""
    return data_json([{"rationale": p.rationale, "params": p.params} for p in proposals])


def _inert(text: str) -> str:
    """Multi-line text made by software (not quoted) that must not open or close a block."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def _budget_text(view: StudyView) -> str:
    """The ``<budget>`` block: trials in the budget, finished, running, left; what one trial
    costs; how many proposals this call asks for."""
    k = view.n_proposals
    b = view.budget
    if b is None:
        lines = ["trials: no budget was set (an open-ended search)"]
    else:
        lines = [f"trials: {b.n_trials} in the budget, {b.finished} finished, {b.running} "
                 f"running, {b.left} left to start (this call's included)"]
    if view.fidelity:
        lines.append(f"one trial: {quote(view.fidelity, max_chars=300)}")
    ask = f"this call: propose exactly {k}"
    if b is not None and b.left <= k:
        ask += " (the last trials of the budget: your best-supported configurations)"
    lines.append(ask)
    return "\n".join(lines)


def _optimizer_state_block(state: str | None) -> str:
    """The hybrid mode's ``<optimizer_state>`` block and how to use it, or ``""``."""
    if not state:
        return ""
    return (
        f"<optimizer_state>\n{_inert(state.strip())}\n</optimizer_state>\n"
        "A classical optimizer leads this search and proposes most trials; <optimizer_state> is "
        "its current model of the space, in parameter units. Your proposals are trained beside "
        "its own: place them where it is uncertain or where the learning curves say it is "
        "wrong, do not duplicate what it would propose next, and avoid regions it has found "
        "poor unless the history gives a reason.\n"
    )


def prompt_values(
    view: StudyView,
    *,
    anonymizer: Anonymizer | None = None,
    history: HistoryOptions | None = None,
) -> dict[str, str]:
    """The template values every role shares, rendered from ``view``.

    Keys: ``objectives``, ``context``, ``budget`` (trials, fidelity, how many to propose),
    ``search_space`` (JSON: param name -> ``ParamSpec.to_prompt_dict()`` plus ``log10`` bounds
    of log-scale params and ``only_when`` of conditional ones), ``history``, ``history_legend``,
    ``n_proposals``, ``optimizer_state`` (the block, or empty), and the placeholders
    ``diagnosis``/``remedies``/``advice``/``tools_note`` that the stages fill in.

    Raises:
        ValueError: ``n_proposals`` < 1, or objective names that do not match the directions.
    """
    anon = anonymizer or Anonymizer(enabled=False)
    if view.n_proposals < 1:
        raise ValueError(f"n_proposals={view.n_proposals} is invalid: ask for at least 1")
    if view.objective_names and len(view.objective_names) != len(view.directions):
        raise ValueError(
            f"{len(view.directions)} directions for {len(view.objective_names)} objective "
            "names: give one name per objective"
        )
    names = view.objective_names or [f"objective_{i}" for i in range(len(view.directions))]
    objectives = "; ".join(
        f"{quote(anon.apply(n), max_chars=80)} ({d})"
        for n, d in zip(names, view.directions, strict=False)
    )
    return {
        "objectives": objectives,
        "context": render_context(view.context, anon) if view.context else "none given",
        "budget": _budget_text(view),
        "search_space": _space_json(view.space),
        "history": render_history(
            view.trials,
            space=view.space,
            directions=view.directions,
            objective_names=names,
            anonymizer=anon,
            options=history or HistoryOptions(),
        ),
        "history_legend": HISTORY_LEGEND,
        "n_proposals": str(view.n_proposals),
        "optimizer_state": _optimizer_state_block(view.optimizer_state),
        "diagnosis": "none",
        "remedies": "none",
        "advice": "none",
        "tools_note": "",
    }


def rule_diagnosis(view: StudyView, recent_k: int) -> tuple[str | None, str | None]:
    """(verdict, deterministic diagnosis text) from the trials' curve features.

    The verdict is a conclusive one (``clear_improvement``/``clear_divergence``) or None; the
    text counts the states and curve flags of the last ``recent_k`` finished trials. Both are
    None before any trial has finished.
    """
    finished = sorted((t for t in view.trials if t.state in _FINISHED), key=lambda t: t.number)
    if not finished:
        return None, None
    verdict = conclusive_verdict(view.trials, view.directions)
    if verdict is not None:
        return verdict, VERDICT_TEXT[verdict]
    recent = finished[-max(recent_k, 1):]
    counts: Counter[str] = Counter()
    for t in recent:
        for flag in trial_features(t, view.directions[0]).flags():
            counts[flag.split("(", 1)[0]] += 1
    states = Counter(t.state.name.lower() for t in recent)
    text = f"Last {len(recent)} finished trials: " + ", ".join(
        f"{n} {s}" for s, n in sorted(states.items())
    )
    if counts:
        text += "; curve flags: " + ", ".join(f"{f} x{n}" for f, n in counts.most_common())
    return None, text + "."
