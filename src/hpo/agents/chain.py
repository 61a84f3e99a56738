"""The agent chain: stages that read a study and propose the next configurations.

A chain turns a :class:`StudyView` (search space, directions, every trial, budget, fidelity) into
a :class:`ChainResult` (proposals, diagnosis, usage, one :class:`CallRecord` per LLM call). Its
stages (:mod:`hpo.agents.stages`) run in order and hand each other prompt blocks: the rule
diagnosis (deterministic curve features) reaches every stage, the analyst's reading and the
researcher's remedies every stage after them, the consultants' advice the supervisor. The
proposing roles are sent a JSON schema built from the search space (:mod:`hpo.agents.schema`).
The sampler checks, repairs (through :meth:`AgentChain.repair`), clamps or replaces every
proposal; chains never see Hydra.

Failure policy: an :class:`~hpo.llm.base.LLMError` from a proposing role (proposer, consultant,
supervisor, planner, repair) ends ``propose``/``repair`` with a :class:`ChainError` that carries
the partial result (the calls made so far, their usage); the sampler falls back. Analyst and
researcher failures only drop their input and are recorded in ``calls`` with ``error`` set.

A chain has no budget of its own: the sampler enforces ``agent.budget`` from the study's totals
in storage (restart-safe, shared by every process of a sweep), before each chain call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import optuna
from pydantic import BaseModel

from hpo.agents.history import Anonymizer, HistoryOptions, quote
from hpo.agents.models import (
    AnalystReply,
    ConsultantReply,
    PlannerReply,
    Proposal,
    ProposerReply,
    ResearchReply,
)
from hpo.agents.prompts import PromptSet
from hpo.agents.rendering import VERDICT_TEXT, prompt_values, proposals_json, rule_diagnosis
from hpo.agents.schema import reply_schema
from hpo.agents.stages import PRESETS, PROPOSING_STAGES, chain_stages
from hpo.llm.base import LLMClient, LLMError, Message, Usage
from hpo.space import ParamSpec

__all__ = [
    "VERDICT_TEXT",
    "AgentChain",
    "CallRecord",
    "ChainError",
    "ChainResult",
    "RoleSettings",
    "StagedChain",
    "StudyView",
    "TrialBudget",
    "prompt_values",
]

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

WEB_SEARCH = "web_search"  # the provider-neutral server tool the researcher asks for

CONSULTANT_PERSONAS: tuple[str, str] = (
    "You lean towards exploitation: you trust the evidence of the best trials and refine "
    "around them, and you ask for evidence before leaving a region that works.",
    "You lean towards exploration: you look for regions, choices and parameter interactions the "
    "search has not tried yet, and you challenge conclusions drawn from too few trials.",
)

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
    """One LLM call of a chain, for provenance, cost accounting and the sampler's audit dump.

    Attributes:
        role: The role that called (``proposer``, ``consultant_a``, ``repair``, ...).
        provider: The provider kind of the client.
        model: The model that answered (the reply's ``model`` field), else the requested one.
        system: The system prompt.
        messages: The messages sent.
        raw_text: The reply text as received (on failure: what was received, if anything).
        usage: Tokens and cost.
        latency_s: Wall time of the call.
        cached: Answered from the reply cache.
        error: ``"<kind>: <message>"`` when the call failed.
        note: A remark such as "web search unavailable".
        request: The exact request sent (messages, response_format or tools, schema), from
            ``Completion.request`` / ``LLMError.request``; None when the client gave none.
        requested_model: The model the client asked for.
        structured_output: The form used: json_schema | json_object | tool | none ("" unknown).
    """

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
    request: dict[str, Any] | None = None
    requested_model: str = ""
    structured_output: str = ""

    def to_dict(self, *, include_prompts: bool = True) -> dict[str, Any]:
        """A JSON-able dict (prompts and the request optional: they are large)."""
        out: dict[str, Any] = {
            "role": self.role,
            "provider": self.provider,
            "model": self.model,
            "requested_model": self.requested_model,
            "structured_output": self.structured_output,
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
            out["request"] = self.request
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


class ChainError(LLMError):
    """A chain's ``propose``/``repair`` failed: an LLM call of a proposing role failed.

    Reads like the LLM error that caused it (``kind``, ``permanent``, ``fix``, ``request`` and
    the message are the cause's) and carries what the chain did before failing.

    Attributes:
        cause: The LLM error of the failed call (also ``__cause__``).
        result: The partial result: the calls made so far (the failed one included, with
            ``error`` set) and their usage; no proposals.
    """

    def __init__(self, cause: LLMError, result: ChainResult) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.result = result
        self.kind = cause.kind
        self.permanent = cause.permanent
        self.fix = cause.fix
        self.request = cause.request


@dataclass
class _Pass:
    """What the stages of one ``propose`` hand to each other."""

    view: StudyView
    values: dict[str, Any]
    result: ChainResult
    rule_text: str | None = None
    analyst: AnalystReply | None = None
    consultants: list[ConsultantReply] = field(default_factory=list)
    proposed: str | None = None  # the proposing stage's own diagnosis / rationale

    def refresh_diagnosis(self) -> None:
        """The ``<diagnosis>`` block: the rules' reading, then the analyst's, when any."""
        lines = [f"rules: {quote(self.rule_text, max_chars=1000)}"] if self.rule_text else []
        a = self.analyst
        if a is not None:
            lines.append(f"diagnosis: {quote(a.diagnosis, max_chars=1500)}")
            lines += [f"finding: {quote(f, max_chars=300)}" for f in a.findings[:10]]
            lines += [f"recommendation: {quote(r, max_chars=300)}"
                      for r in a.recommendations[:10]]
        self.values["diagnosis"] = "\n".join(lines) or "none"

    def summary(self) -> str | None:
        """The diagnosis the chain reports (the study note): the analyst's, else the proposing
        stage's, else the first consultant's advice; None when no LLM gave one (a note from an
        earlier call then stays)."""
        if self.analyst is not None and self.analyst.diagnosis:
            return self.analyst.diagnosis
        if self.proposed:
            return self.proposed
        if self.consultants and self.consultants[0].advice:
            return self.consultants[0].advice
        return None


class StagedChain:
    """An agent chain: a list of stages run in order, the last one proposing.

    Args:
        stages: Stage names (see :mod:`hpo.agents.stages`), e.g. ``("analyst", "proposer",
            "checker")``, or a preset name (``"single"``, ``"diagnose"``, ``"consultants"``,
            ``"planner"``).
        client: The default LLM client of every role.
        name: The chain's name (default: the preset's, or the stages joined by ``+``).
        roles: Per-role settings overriding the default (e.g. ``{"proposer": RoleSettings(...)}``;
            ``consultant`` covers ``consultant_a``/``consultant_b``; ``repair`` defaults to the
            proposing stage's).
        temperature: Default sampling temperature.
        max_tokens: Default reply token cap.
        history: How much history each prompt shows.
        anonymizer: Applied to free text rendered into prompts.
        prompts: The prompt templates.
        consultant_turns: Discussion turns of the consultants stage (``2 * turns`` calls).
        schema_grid: Send numeric parameters as an enum of about this many values inside their
            bounds (see :func:`hpo.agents.schema.param_schema`); None sends the bounds.

    Raises:
        ValueError: Invalid stages, or ``consultant_turns`` < 1.
    """

    def __init__(
        self,
        stages: str | Sequence[str] = PRESETS["diagnose"],
        *,
        client: LLMClient,
        name: str | None = None,
        roles: Mapping[str, RoleSettings] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        history: HistoryOptions | None = None,
        anonymizer: Anonymizer | None = None,
        prompts: PromptSet | None = None,
        consultant_turns: int = 2,
        schema_grid: int | None = None,
    ) -> None:
        if (not isinstance(consultant_turns, int) or isinstance(consultant_turns, bool)
                or consultant_turns < 1):
            raise ValueError(
                f"consultant_turns={consultant_turns!r} is invalid: use an integer >= 1"
            )
        default_name, self.stages = chain_stages(stages)
        self.name = name or default_name
        self.proposing_stage = next(s for s in self.stages if s in PROPOSING_STAGES)
        self.turns = consultant_turns
        self.schema_grid = schema_grid
        self.default = RoleSettings(client=client, temperature=temperature, max_tokens=max_tokens)
        self.roles: dict[str, RoleSettings] = dict(roles or {})
        self.history = history or HistoryOptions()
        self.anonymizer = anonymizer or Anonymizer()
        self.prompts = prompts or PromptSet()

    def __repr__(self) -> str:
        c = self.default.client
        return (f"StagedChain({list(self.stages)!r}, provider={c.provider!r}, "
                f"model={c.model!r})")

    # -- public ------------------------------------------------------------------------------
    def propose(self, view: StudyView) -> ChainResult:
        """Proposals for ``view.n_proposals`` slots from the chain's stages.

        Raises:
            ChainError: A proposing or consulting role failed (``exc.result`` holds the partial
                result).
        """

        def run(view: StudyView, result: ChainResult) -> None:
            p = _Pass(view=view, values=self._values(view), result=result)
            result.verdict, p.rule_text = rule_diagnosis(view, self.history.recent_k)
            p.refresh_diagnosis()
            for stage in self.stages:
                getattr(self, f"_stage_{stage}")(p)
            result.diagnosis = p.summary()

        return self._run(run, view)

    def repair(self, view: StudyView, previous: ChainResult, errors: list[str]) -> ChainResult:
        """Ask once more for proposals that fix ``errors`` (one per rejected proposal or issue).

        Raises:
            ChainError: The repair call failed (the sampler clamps or falls back).
        """

        def run(view: StudyView, result: ChainResult) -> None:
            values = self._values(view)
            values["previous"] = proposals_json(previous.proposals)
            values["errors"] = "\n".join(f"- {quote(e, max_chars=400)}" for e in errors) or "none"
            schema = reply_schema(ProposerReply, view.space, view.n_proposals,
                                  grid=self.schema_grid)
            reply = self._call("repair", ProposerReply, values, result, schema=schema)
            result.proposals = list(reply.proposals)
            result.diagnosis = reply.diagnosis or previous.diagnosis
            result.step = previous.step

        return self._run(run, view)

    # -- stages ------------------------------------------------------------------------------
    def _stage_checker(self, p: _Pass) -> None:
        """The sampler checks every proposal; nothing to do here."""

    def _stage_analyst(self, p: _Pass) -> None:
        result = p.result
        if p.rule_text is None:
            result.notes.append("analyst skipped: no finished trial yet")
            return
        if result.verdict is not None:
            result.notes.append(f"analyst skipped: rule verdict {result.verdict}")
            return
        p.analyst = self._optional("analyst", AnalystReply, p.values, result, drops="diagnosis")
        p.refresh_diagnosis()

    def _stage_researcher(self, p: _Pass) -> None:
        """Ask the researcher for remedies to the diagnosis so far; a failure only drops them."""
        result = p.result
        if p.rule_text is None and p.analyst is None:
            result.notes.append("researcher skipped: nothing to diagnose yet")
            return
        client = self._settings("researcher").client
        tools: list[str] | None = None
        note: str | None = None
        if WEB_SEARCH in client.server_tools:
            tools = [WEB_SEARCH]
            tools_note = "Use web search for recent, well-supported remedies."
        else:
            note = "web search unavailable with this client: asked without tools"
            tools_note = "You have no web access: rely on well-established practice."
        vals = {**p.values, "tools_note": tools_note}
        reply = self._optional("researcher", ResearchReply, vals, result, drops="remedies",
                               tools=tools, note=note)
        if reply is None:
            return
        if reply.remedies:
            p.values["remedies"] = "\n".join(
                f"- {quote(r, max_chars=300)}" for r in reply.remedies[:8]
            )
        if note:
            result.notes.append(note)

    def _stage_consultants(self, p: _Pass) -> None:
        """Two consultants, ``turns`` turns: A sees B's advice of the previous turn, B sees A's
        of this turn. Their last advice goes to the supervisor."""
        schema = reply_schema(ConsultantReply, p.view.space, p.view.n_proposals,
                              grid=self.schema_grid)
        last: list[ConsultantReply | None] = [None, None]
        for turn in range(1, self.turns + 1):
            for i in (0, 1):
                other = last[1 - i]
                other_text = (
                    "none yet"
                    if other is None
                    else f"advice: {quote(other.advice, max_chars=1500)}\n"
                    f"proposals: {proposals_json(other.proposals)}"
                )
                vals = {
                    **p.values,
                    "persona": CONSULTANT_PERSONAS[i],
                    "other_advice": other_text,
                    "turn": str(turn),
                    "turns": str(self.turns),
                }
                last[i] = self._call(
                    f"consultant_{'ab'[i]}", ConsultantReply, vals, p.result,
                    prompt_role="consultant", schema=schema,
                )
        p.consultants = [r for r in last if r is not None]
        p.values["advice"] = "\n".join(
            f"consultant {'AB'[i]} advice: {quote(r.advice, max_chars=1500)}\n"
            f"consultant {'AB'[i]} proposals: {proposals_json(r.proposals)}"
            for i, r in enumerate(p.consultants)
        )

    def _stage_proposer(self, p: _Pass) -> None:
        self._proposing(p, "proposer")

    def _stage_supervisor(self, p: _Pass) -> None:
        self._proposing(p, "supervisor")

    def _proposing(self, p: _Pass, role: str) -> None:
        schema = reply_schema(ProposerReply, p.view.space, p.view.n_proposals,
                              grid=self.schema_grid)
        reply = self._call(role, ProposerReply, p.values, p.result, schema=schema)
        p.result.proposals = list(reply.proposals)
        p.proposed = reply.diagnosis or None

    def _stage_planner(self, p: _Pass) -> None:
        schema = reply_schema(PlannerReply, p.view.space, p.view.n_proposals,
                              grid=self.schema_grid)
        reply = self._call("planner", PlannerReply, p.values, p.result, schema=schema)
        result = p.result
        result.step = reply.step
        result.proposals = list(reply.proposals)
        p.proposed = reply.rationale or None
        if reply.step == "stop":
            result.stop = True
            result.stop_reason = reply.rationale or "the planner asked to stop"

    # -- machinery ---------------------------------------------------------------------------
    def _values(self, view: StudyView) -> dict[str, Any]:
        return prompt_values(view, anonymizer=self.anonymizer, history=self.history)

    def _settings(self, role: str) -> RoleSettings:
        if role == "repair" and role not in self.roles:
            role = self.proposing_stage  # repair speaks with the proposing role's settings
        if role.startswith("consultant_") and role not in self.roles:
            role = "consultant"
        return self.roles.get(role, self.default)

    def _run(self, fn: Callable[[StudyView, ChainResult], None], view: StudyView) -> ChainResult:
        result = ChainResult(proposals=[], diagnosis=None)
        try:
            fn(view, result)
        except LLMError as exc:
            raise ChainError(exc, result) from exc
        return result

    def _optional(
        self, role: str, reply_model: type[R], values: Mapping[str, Any], result: ChainResult,
        *, drops: str, **kwargs: Any,
    ) -> R | None:
        """A call whose failure only drops its input (``drops``)."""
        try:
            return self._call(role, reply_model, values, result, **kwargs)
        except LLMError as exc:
            logger.warning("%s failed (%s): proposing without its %s", role, exc.kind, drops)
            result.notes.append(f"{role} failed ({exc.kind}): no {drops}")
            return None

    def _call(
        self,
        role: str,
        reply_model: type[R],
        values: Mapping[str, Any],
        result: ChainResult,
        *,
        prompt_role: str | None = None,
        schema: dict[str, Any] | None = None,
        tools: list[str] | None = None,
        note: str | None = None,
    ) -> R:
        settings = self._settings(role)
        client = settings.client
        system, user = self.prompts.render(prompt_role or role, values)
        messages = [Message(role="user", content=user)]
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["schema"] = schema
        if tools:
            extra["tools"] = tools
        start = time.perf_counter()
        try:
            completion = client.complete(
                messages,
                reply_model,
                system=system,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                **extra,
            )
        except LLMError as exc:
            self._record(CallRecord(
                role=role,
                provider=client.provider,
                model=client.model,
                system=system,
                messages=messages,
                raw_text=str(getattr(exc, "raw_text", "") or ""),
                usage=getattr(exc, "usage", None) or Usage(),
                latency_s=time.perf_counter() - start,
                cached=False,
                error=f"{exc.kind}: {exc}",
                note=note,
                request=exc.request,
                requested_model=client.model,
            ), result)
            raise
        self._record(CallRecord(
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
            request=completion.request or None,
            requested_model=completion.requested_model or client.model,
            structured_output=completion.structured_output,
        ), result)
        return completion.reply

    def _record(self, record: CallRecord, result: ChainResult) -> None:
        result.calls.append(record)
        result.usage = result.usage + record.usage
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
