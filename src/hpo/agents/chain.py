"""The agent chains: roles that read a study and propose the next configurations.

A chain turns a :class:`StudyView` (search space, directions, every trial) into a
:class:`ChainResult` (proposals, diagnosis, usage, one :class:`CallRecord` per LLM call). The
sampler checks, repairs (through :meth:`AgentChain.repair`), clamps or replaces every proposal;
chains never see Hydra.

Failure policy: an :class:`~hpo.llm.base.LLMError` from a proposing role (proposer, consultant,
supervisor, planner, repair) propagates out of ``propose``/``repair`` with the partial result
attached as ``exc.chain_result``; the sampler falls back. Analyst and researcher failures only
drop their input and are recorded in ``calls`` with ``error`` set.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel

from hpo.agents.features import conclusive_verdict, trial_features
from hpo.agents.history import Anonymizer, HistoryOptions, quote, render_context, render_history
from hpo.agents.models import (
    AnalystReply,
    ConsultantReply,
    PlannerReply,
    Proposal,
    ProposerReply,
    ResearchReply,
)
from hpo.agents.prompts import PromptSet
from hpo.llm.base import LLMClient, LLMError, Message, Usage
from hpo.secrets import redact
from hpo.space import ParamSpec

__all__ = [
    "WEB_SEARCH_TOOL",
    "AgentChain",
    "Budget",
    "BudgetExceeded",
    "CallRecord",
    "ChainResult",
    "ConsultantsChain",
    "DiagnoseChain",
    "PlannerChain",
    "RoleSettings",
    "SingleChain",
    "StudyView",
    "TrialBudget",
    "prompt_values",
]

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

WEB_SEARCH_TOOL: dict[str, Any] = {
    "type": "web_search_20250305",
    "name": "web_search",
    "max_uses": 3,
}

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

CONSULTANT_PERSONAS: tuple[str, str] = (
    "You lean towards exploitation: you trust the evidence of the best trials and refine "
    "around them, and you ask for evidence before leaving a region that works.",
    "You lean towards exploration: you look for regions, choices and parameter interactions the "
    "search has not tried yet, and you challenge conclusions drawn from too few trials.",
)

VERDICT_TEXT: dict[str, str] = {
    "clear_improvement": (
        "Rule verdict (no analyst call): the latest trial clearly improved the best result and "
        "its learning curves show no divergence or overfitting. Refine around it: small steps "
        "on the parameters it changed, keep what worked."
    ),
    "clear_divergence": (
        "Rule verdict (no analyst call): the latest trials diverged (non-finite values or a loss "
        "that ended worse than it started). Move to more stable settings: a lower learning rate, "
        "stronger regularization or gradient-friendly choices; avoid the diverged region."
    ),
}


@dataclass(frozen=True)
class TrialBudget:
    """Where the study stands against its budget when the chain is asked.

    Attributes:
        n_trials: The study's budget (``hydra.sweeper.n_trials``).
        finished: Trials that count in the budget and have finished.
        running: Trials in flight now.
        left: Trials still to be started, the ones being proposed included.
    """

    n_trials: int
    finished: int
    running: int
    left: int


@dataclass
class StudyView:
    """What a chain sees of a study.

    Attributes:
        space: The search space.
        directions: ``"minimize"`` or ``"maximize"``, one per objective.
        objective_names: One name per objective (e.g. ``"val/acc"``).
        trials: Every trial, including RUNNING ones.
        n_proposals: How many proposals the sampler wants (one per free slot, never more than
            the budget has left).
        context: Free text such as a task description; anonymized unless opted out.
        budget: The trial budget, when the study has one (None: open-ended).
        fidelity: What one trial costs, e.g. "up to 20 epochs; median trial 34 s".
        optimizer_state: Hybrid mode: the classical optimizer's state in parameter units
            (rendered text), else None.
    """

    space: list[ParamSpec]
    directions: list[str]
    objective_names: list[str]
    trials: list[optuna.trial.FrozenTrial]
    n_proposals: int
    context: dict[str, str] = field(default_factory=dict)
    budget: TrialBudget | None = None
    fidelity: str | None = None
    optimizer_state: str | None = None


@dataclass
class CallRecord:
    """One LLM call of a chain, for provenance, cost accounting and prompt dumps."""

    role: str
    provider: str
    model: str
    system: str
    messages: list[Message]
    raw_text: str
    usage: Usage
    latency_s: float
    cached: bool
    error: str | None
    note: str | None = None

    def to_dict(self, *, include_prompts: bool = True) -> dict[str, Any]:
        """A JSON-able dict (prompts optional: they are large)."""
        out: dict[str, Any] = {
            "role": self.role,
            "provider": self.provider,
            "model": self.model,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "cost_usd": self.usage.cost_usd,
            },
            "latency_s": self.latency_s,
            "cached": self.cached,
            "error": self.error,
            "note": self.note,
            "raw_text": self.raw_text,
        }
        if include_prompts:
            out["system"] = self.system
            out["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return out


@dataclass
class ChainResult:
    """What one ``propose``/``repair`` produced.

    Attributes:
        proposals: Candidate configurations, unchecked (the sampler checks them).
        diagnosis: The analyst's (or the proposer's) reading of the history.
        stop: The planner asked to stop the search.
        stop_reason: Why, when ``stop``.
        step: The planner's step (small/medium/radical/stop).
        usage: Sum of the usage of every call.
        calls: One record per LLM call, failed ones included.
        verdict: The rule verdict that let the chain skip its analyst, if any.
        notes: Short remarks on what the chain did (skips, degraded roles).
    """

    proposals: list[Proposal]
    diagnosis: str | None
    stop: bool = False
    stop_reason: str | None = None
    step: str | None = None
    usage: Usage = field(default_factory=Usage)
    calls: list[CallRecord] = field(default_factory=list)
    verdict: str | None = None
    notes: list[str] = field(default_factory=list)


class AgentChain(Protocol):
    """A chain of LLM roles that proposes configurations."""

    name: str

    def propose(self, view: StudyView) -> ChainResult: ...

    def repair(self, view: StudyView, previous: ChainResult, errors: list[str]) -> ChainResult: ...


@dataclass(frozen=True)
class RoleSettings:
    """How one role calls its LLM: the client (its own model/timeout/retries) and sampling."""

    client: LLMClient
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Budget:
    """Spending caps over the chain's lifetime; None means no cap."""

    max_tokens: int | None = None
    max_usd: float | None = None

    def exceeded(self, spent: Usage) -> str | None:
        """Why ``spent`` is over budget, or None."""
        if self.max_tokens is not None:
            total = spent.input_tokens + spent.output_tokens
            if total >= self.max_tokens:
                return f"token budget spent ({total} >= {self.max_tokens})"
        if self.max_usd is not None and spent.cost_usd >= self.max_usd:
            return f"cost budget spent (${spent.cost_usd:.4f} >= ${self.max_usd:.4f})"
        return None


class BudgetExceeded(LLMError):
    """The agent budget is spent: no more LLM calls (the sampler falls back)."""

    kind = "budget"


def _space_json(space: Sequence[ParamSpec]) -> str:
    blob = json.dumps(
        {p.name: p.to_prompt_dict() for p in space}, ensure_ascii=False, separators=(", ", ": ")
    )
    return blob.replace("<", "\\u003c").replace(">", "\\u003e")


def _data_json(obj: Any) -> str:
    """LLM- or storage-produced structures as inert JSON inside a data block."""
    blob = json.dumps(obj, ensure_ascii=False, default=str)
    return blob.replace("<", "\\u003c").replace(">", "\\u003e")


def _proposals_json(proposals: Sequence[Proposal]) -> str:
    return _data_json([{"params": p.params, "rationale": p.rationale} for p in proposals])


def prompt_values(
    view: StudyView,
    *,
    anonymizer: Anonymizer | None = None,
    history: HistoryOptions | None = None,
) -> dict[str, str]:
    """The template values every role shares, rendered from ``view``.

    Keys: ``objectives``, ``context``, ``search_space`` (JSON: param name ->
    ``ParamSpec.to_prompt_dict()``), ``history``, ``n_proposals``, and the placeholders
    ``diagnosis``/``remedies``/``tools_note`` that chains fill in.

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
        "context": render_context(view.context, anon) if view.context else "none",
        "search_space": _space_json(view.space),
        "history": render_history(
            view.trials,
            space=view.space,
            directions=view.directions,
            objective_names=names,
            anonymizer=anon,
            options=history or HistoryOptions(),
        ),
        "n_proposals": str(view.n_proposals),
        "diagnosis": "none",
        "remedies": "none",
        "tools_note": "",
    }


class _ChainBase:
    """Shared machinery: prompt values, LLM calls with records, budget, dumps."""

    name = "base"
    _proposing_role = "proposer"

    def __init__(
        self,
        *,
        client: LLMClient,
        roles: Mapping[str, RoleSettings] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        history: HistoryOptions | None = None,
        anonymizer: Anonymizer | None = None,
        researcher: bool = False,
        prompts: PromptSet | None = None,
        budget: Budget | None = None,
        dump_dir: str | Path | None = None,
    ) -> None:
        self.default = RoleSettings(client=client, temperature=temperature, max_tokens=max_tokens)
        self.roles: dict[str, RoleSettings] = dict(roles or {})
        self.history = history or HistoryOptions()
        self.anonymizer = anonymizer or Anonymizer()
        self.researcher = researcher
        self.prompts = prompts or PromptSet()
        self.budget = budget or Budget()
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.spent = Usage()
        self._lock = threading.Lock()
        self._seq = 0

    def __repr__(self) -> str:
        c = self.default.client
        return f"{type(self).__name__}(provider={c.provider!r}, model={c.model!r})"

    # -- prompt values -----------------------------------------------------------------------
    def _values(self, view: StudyView) -> dict[str, Any]:
        return prompt_values(view, anonymizer=self.anonymizer, history=self.history)

    # -- calls -------------------------------------------------------------------------------
    def _settings(self, role: str) -> RoleSettings:
        if role == "repair" and role not in self.roles:
            role = self._proposing_role  # repair speaks with the proposing role's settings
        return self.roles.get(role, self.default)

    def _call(
        self,
        role: str,
        reply_model: type[R],
        values: Mapping[str, Any],
        result: ChainResult,
        *,
        prompt_role: str | None = None,
        extra_kwargs: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> R:
        settings = self._settings(role)
        client = settings.client
        system, user = self.prompts.render(prompt_role or role, values)
        messages = [Message(role="user", content=user)]
        with self._lock:
            why = self.budget.exceeded(self.spent)
        if why:
            raise BudgetExceeded(
                f"agent budget: {why}; raise agent.budget or let the fallback sampler run"
            )
        start = time.perf_counter()
        try:
            completion = client.complete(
                messages,
                reply_model,
                system=system,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                **dict(extra_kwargs or {}),
            )
        except LLMError as exc:
            usage = getattr(exc, "usage", None) or Usage()
            record = CallRecord(
                role=role,
                provider=client.provider,
                model=client.model,
                system=system,
                messages=messages,
                raw_text=str(getattr(exc, "raw_text", "") or ""),
                usage=usage,
                latency_s=time.perf_counter() - start,
                cached=False,
                error=f"{exc.kind}: {exc}",
                note=note,
            )
            self._record(record, result)
            raise
        record = CallRecord(
            role=role,
            provider=completion.provider,
            model=completion.model,
            system=system,
            messages=messages,
            raw_text=completion.raw_text,
            usage=completion.usage,
            latency_s=completion.latency_s,
            cached=completion.cached,
            error=None,
            note=note,
        )
        self._record(record, result)
        return completion.reply

    def _record(self, record: CallRecord, result: ChainResult) -> None:
        result.calls.append(record)
        result.usage = result.usage + record.usage
        with self._lock:
            self.spent = self.spent + record.usage
            self._seq += 1
            seq = self._seq
        logger.debug(
            "%s/%s: %s %s, %d+%d tokens, $%.4f%s%s",
            self.name,
            record.role,
            record.provider,
            record.model,
            record.usage.input_tokens,
            record.usage.output_tokens,
            record.usage.cost_usd,
            " (cached)" if record.cached else "",
            f" error={record.error}" if record.error else "",
        )
        self._dump(seq, record)

    def _dump(self, seq: int, record: CallRecord) -> None:
        if self.dump_dir is None:
            return
        path = self.dump_dir / f"{int(time.time())}-{seq:05d}-{record.role}.md"
        body = [
            f"# {record.role} ({record.provider} / {record.model})",
            f"usage: {record.usage.input_tokens} in, {record.usage.output_tokens} out, "
            f"${record.usage.cost_usd:.5f}; latency {record.latency_s:.2f}s; "
            f"cached={record.cached}; error={record.error}; note={record.note}",
            "", "## system", "", record.system,
        ]
        for m in record.messages:
            body += ["", f"## {m.role}", "", m.content]
        body += ["", "## reply (raw)", "", record.raw_text, ""]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(redact("\n".join(body)), encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot dump prompt to %s: %s", path, exc)

    def _run(self, fn: Any, view: StudyView) -> ChainResult:
        result = ChainResult(proposals=[], diagnosis=None)
        try:
            fn(view, result)
        except LLMError as exc:
            exc.chain_result = result  # type: ignore[attr-defined]
            raise
        return result

    # -- optional roles ----------------------------------------------------------------------
    def _rule_diagnosis(self, view: StudyView) -> tuple[str | None, str | None]:
        """(verdict, deterministic diagnosis text) from the trials' curve features."""
        finished = sorted((t for t in view.trials if t.state in _FINISHED), key=lambda t: t.number)
        if not finished:
            return None, None
        verdict = conclusive_verdict(view.trials, view.directions)
        if verdict is not None:
            return verdict, VERDICT_TEXT[verdict]
        recent = finished[-max(self.history.recent_k, 1):]
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

    def _values_with_rules(
        self, view: StudyView, result: ChainResult
    ) -> tuple[dict[str, Any], str | None]:
        """Prompt values plus the rule diagnosis (also returned) and the researcher's
        remedies, when any."""
        values = self._values(view)
        verdict, rule_text = self._rule_diagnosis(view)
        result.verdict = verdict
        self._research(view, values, rule_text, result)
        if rule_text:
            values["diagnosis"] = quote(rule_text, max_chars=1000)
        return values, rule_text

    def _research(
        self, view: StudyView, values: dict[str, Any], diagnosis: str | None, result: ChainResult
    ) -> None:
        """Ask the researcher for remedies; a failure only drops them."""
        if not self.researcher:
            return
        if not diagnosis:
            result.notes.append("researcher skipped: nothing to diagnose yet")
            return
        client = self._settings("researcher").client
        extra: dict[str, Any] = {}
        note: str | None = None
        if _accepts_tools(client) and _is_anthropic(client):
            extra["tools"] = [dict(WEB_SEARCH_TOOL)]
            tools_note = "Use web search for recent, well-supported remedies."
        else:
            note = "web search unavailable with this client: asked without tools"
            tools_note = "You have no web access: rely on well-established practice."
        vals = {**values, "diagnosis": quote(diagnosis, max_chars=2000), "tools_note": tools_note}
        try:
            reply = self._call(
                "researcher", ResearchReply, vals, result, extra_kwargs=extra, note=note
            )
        except BudgetExceeded:
            raise
        except LLMError as exc:
            logger.warning("researcher failed (%s): proposing without remedies", exc.kind)
            result.notes.append(f"researcher failed ({exc.kind}): no remedies")
            return
        if reply.remedies:
            values["remedies"] = "\n".join(
                f"- {quote(r, max_chars=300)}" for r in reply.remedies[:8]
            )
        if note:
            result.notes.append(note)

    # -- repair ------------------------------------------------------------------------------
    def repair(self, view: StudyView, previous: ChainResult, errors: list[str]) -> ChainResult:
        """Ask once more for proposals that fix ``errors`` (one per rejected proposal or issue).

        Raises:
            LLMError: The repair call failed (the sampler clamps or falls back).
        """

        def run(view: StudyView, result: ChainResult) -> None:
            values = self._values(view)
            values["previous"] = _proposals_json(previous.proposals)
            values["errors"] = "\n".join(f"- {quote(e, max_chars=400)}" for e in errors) or "none"
            reply = self._call("repair", ProposerReply, values, result)
            result.proposals = list(reply.proposals)
            result.diagnosis = reply.diagnosis or previous.diagnosis
            result.step = previous.step

        return self._run(run, view)


def _accepts_tools(client: LLMClient) -> bool:
    try:
        return "tools" in inspect.signature(client.complete).parameters
    except (TypeError, ValueError):
        return False


def _is_anthropic(client: LLMClient) -> bool:
    return client.provider in ("claude", "anthropic") or type(client).__name__ == "AnthropicClient"


class SingleChain(_ChainBase):
    """One proposer call (plus the optional researcher).

    Args:
        client: The default LLM client of every role.
        roles: Per-role settings overriding the default (e.g. ``{"proposer": RoleSettings(...)}``).
        temperature: Default sampling temperature.
        max_tokens: Default reply token cap.
        history: How much history each prompt shows.
        anonymizer: Applied to free text rendered into prompts.
        researcher: Ask a researcher for remedies first (off by default).
        prompts: The prompt templates.
        budget: Token / cost caps over the chain's lifetime.
        dump_dir: Directory for one Markdown dump per call (None: no dumps).
    """

    name = "single"

    def propose(self, view: StudyView) -> ChainResult:
        """Proposals for ``view.n_proposals`` slots.

        Raises:
            LLMError: The proposer failed (``exc.chain_result`` holds the partial result).
        """
        return self._run(self._propose, view)

    def _propose(self, view: StudyView, result: ChainResult) -> None:
        values, _ = self._values_with_rules(view, result)
        self._propose_with(values, result)

    def _propose_with(self, values: dict[str, Any], result: ChainResult) -> None:
        reply = self._call("proposer", ProposerReply, values, result)
        result.proposals = list(reply.proposals)
        if result.diagnosis is None and reply.diagnosis:
            result.diagnosis = reply.diagnosis


class DiagnoseChain(SingleChain):
    """Analyst → (researcher) → proposer; the analyst is skipped on a conclusive rule verdict.

    Constructor arguments as :class:`SingleChain`.
    """

    name = "diagnose"

    def _propose(self, view: StudyView, result: ChainResult) -> None:
        values = self._values(view)
        verdict, rule_text = self._rule_diagnosis(view)
        result.verdict = verdict
        diagnosis: str | None = None
        block: str | None = None
        if rule_text is None:
            result.notes.append("analyst skipped: no finished trial yet")
        elif verdict is not None:
            result.notes.append(f"analyst skipped: rule verdict {verdict}")
            diagnosis = rule_text
            block = quote(rule_text, max_chars=1000)
        else:
            try:
                reply = self._call("analyst", AnalystReply, values, result)
            except BudgetExceeded:
                raise
            except LLMError as exc:
                logger.warning("analyst failed (%s): proposing without a diagnosis", exc.kind)
                result.notes.append(f"analyst failed ({exc.kind}): no diagnosis")
                diagnosis, block = rule_text, quote(rule_text, max_chars=1000)
            else:
                diagnosis = reply.diagnosis
                lines = [f"diagnosis: {quote(reply.diagnosis, max_chars=1500)}"]
                lines += [f"finding: {quote(f, max_chars=300)}" for f in reply.findings[:10]]
                lines += [
                    f"recommendation: {quote(r, max_chars=300)}"
                    for r in reply.recommendations[:10]
                ]
                block = "\n".join(lines)
        result.diagnosis = diagnosis
        self._research(view, values, diagnosis, result)
        if block:
            values["diagnosis"] = block
        self._propose_with(values, result)


class ConsultantsChain(_ChainBase):
    """Two consultants discuss for ``turns`` turns, then a supervisor decides.

    In each turn consultant A sees B's advice of the previous turn and B sees A's advice of this
    turn, so ``2 * turns + 1`` calls are made (plus the optional researcher).

    Args:
        turns: Discussion turns (at least 1).
        **kwargs: As :class:`SingleChain`.
    """

    name = "consultants"
    _proposing_role = "supervisor"

    def __init__(self, *, turns: int = 2, **kwargs: Any) -> None:
        if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
            raise ValueError(f"consultant_turns={turns!r} is invalid: use an integer >= 1")
        super().__init__(**kwargs)
        self.turns = turns

    def propose(self, view: StudyView) -> ChainResult:
        """Proposals from the supervisor after the consultants' discussion.

        Raises:
            LLMError: A consultant or the supervisor failed.
        """
        return self._run(self._propose, view)

    def _propose(self, view: StudyView, result: ChainResult) -> None:
        values = self._values(view)
        verdict, rule_text = self._rule_diagnosis(view)
        result.verdict = verdict
        self._research(view, values, rule_text, result)
        last: list[ConsultantReply | None] = [None, None]
        for turn in range(1, self.turns + 1):
            for i in (0, 1):
                other = last[1 - i]
                other_text = (
                    "none yet"
                    if other is None
                    else f"advice: {quote(other.advice, max_chars=1500)}\n"
                    f"proposals: {_proposals_json(other.proposals)}"
                )
                vals = {
                    **values,
                    "persona": CONSULTANT_PERSONAS[i],
                    "other_advice": other_text,
                    "turn": str(turn),
                    "turns": str(self.turns),
                }
                last[i] = self._call(
                    f"consultant_{'ab'[i]}", ConsultantReply, vals, result,
                    prompt_role="consultant",
                )
        advice = []
        for i, reply in enumerate(last):
            assert reply is not None
            advice.append(
                f"consultant {'AB'[i]} advice: {quote(reply.advice, max_chars=1500)}\n"
                f"consultant {'AB'[i]} proposals: {_proposals_json(reply.proposals)}"
            )
        vals = {**values, "advice": "\n".join(advice)}
        reply_s = self._call("supervisor", ProposerReply, vals, result)
        result.proposals = list(reply_s.proposals)
        result.diagnosis = reply_s.diagnosis or (last[0].advice if last[0] else None)

    def _settings(self, role: str) -> RoleSettings:
        if role.startswith("consultant_") and role not in self.roles:
            return self.roles.get("consultant", self.default)
        return super()._settings(role)


class PlannerChain(_ChainBase):
    """A planner chooses the step (small/medium/radical) or stops, with the proposals.

    Constructor arguments as :class:`SingleChain`.
    """

    name = "planner"
    _proposing_role = "planner"

    def propose(self, view: StudyView) -> ChainResult:
        """The planner's step and proposals; ``stop=True`` when it asks to stop.

        Raises:
            LLMError: The planner failed.
        """
        return self._run(self._propose, view)

    def _propose(self, view: StudyView, result: ChainResult) -> None:
        values, rule_text = self._values_with_rules(view, result)
        reply = self._call("planner", PlannerReply, values, result)
        result.step = reply.step
        result.proposals = list(reply.proposals)
        result.diagnosis = reply.rationale or rule_text
        if reply.step == "stop":
            result.stop = True
            result.stop_reason = reply.rationale or "the planner asked to stop"
