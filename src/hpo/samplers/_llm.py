"""``LLMSampler``: an Optuna sampler whose proposals come from an LLM agent chain.

Knows Optuna and the agent-chain protocol, nothing of Hydra. One instance serves many
concurrent asks: a lock guards the proposal queue, and one chain call fills the queue with a
batch of proposals for as many parallel slots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

# Trial and study user attributes (provenance, running totals, the planner's stop).
from hpo.attrs import (
    BATCH,
    COST_USD,
    COST_USD_TOTAL,
    DROPPED_PARAMS,
    DROPPED_PROPOSALS,
    FALLBACK_REASON,
    FALLBACK_TOTAL,
    LATENCY_S,
    LLM_CALL,
    LLM_CALLS_TOTAL,
    PARAM_SOURCES,
    RATIONALE,
    SOURCE,
    STEP,
    STOP,
    TOKENS_IN,
    TOKENS_IN_TOTAL,
    TOKENS_OUT,
    TOKENS_OUT_TOTAL,
)
from hpo.llm.base import LLMError, LLMMalformedReply, Usage
from hpo.secrets import redact, redact_obj
from hpo.space import ParamSpec, check_value, clamp_value

if TYPE_CHECKING:
    from hpo.agents.chain import AgentChain, ChainResult, StudyView

__all__ = ["LLMSampler"]

_logger = logging.getLogger(__name__)

# How far a value departs from the LLM's proposal, in increasing order.
_LLM_SOURCES = ("llm", "repaired", "clamped")
_RATIONALE_MAX_CHARS = 600


@dataclass
class _Candidate:
    """One proposal on its way through the checker."""

    index: int  # 1-based position in the chain's reply, as the repair prompt names it
    raw: dict[str, Any]
    rationale: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


@dataclass
class _Queued:
    """A checked proposal waiting for a trial."""

    values: dict[str, Any]
    sources: dict[str, str]
    rationale: str
    call_id: str
    batch: str
    step: str | None
    dropped_params: list[str]
    # The whole call's usage and latency ride on the first trial of the batch only.
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    dropped_proposals: list[str] = field(default_factory=list)


@dataclass
class _Spent:
    """The LLM requests and usage of one refill (propose plus repair, failed parts included)."""

    calls: list[Any] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def add(self, result: ChainResult) -> None:
        self.calls += list(result.calls)
        self.usage = self.usage + result.usage

    def add_failure(self, exc: Exception) -> None:
        partial = getattr(exc, "chain_result", None)
        if partial is not None:  # the chain attaches what it did before failing
            self.add(partial)
        elif isinstance(exc, LLMMalformedReply):
            self.usage = self.usage + exc.usage


class LLMSampler(BaseSampler):
    """Samples trials from proposals of an LLM agent chain, checked against the search space.

    Per trial the sampler picks one path and records it in the trial user attr ``hpo:source``:

    - ``baseline``: the study's first trial takes each :class:`~hpo.space.ParamSpec` default
      (clamped into range when needed); parameters without a default come from the fallback.
    - ``llm`` / ``repaired`` / ``clamped``: a proposal of the chain. Proposals are checked
      with :func:`~hpo.space.check_value`; unknown parameters are dropped
      (``hpo:dropped_params``); any violation triggers ONE ``chain.repair``; what is still
      invalid is clamped (numbers) or left to the fallback sampler (categoricals, missing
      values). When the sources differ per parameter, ``hpo:param_sources`` maps each name to
      its source (``fallback`` included). Proposals equal to an existing trial (any state,
      RUNNING included) or to another queued proposal are dropped and listed in
      ``hpo:dropped_proposals`` of the trial that made the call.
    - ``fallback``: the whole trial from the fallback sampler, with ``hpo:fallback_reason``:
      ``startup`` (define-by-run, nothing finished yet), ``no_llm``, ``llm_error:<kind>``
      (the :class:`~hpo.llm.base.LLMError` kind; ``internal`` for any other exception of the
      chain; after ``auth`` the LLM is not asked again), ``budget`` (this sampler's or the
      chain's own budget), ``share``, ``stop`` or ``no_proposal`` (the chain's reply left
      nothing usable).

    Batching: when the queue is empty one ``chain.propose`` asks for ``batch_size``
    proposals; the next asks pop them, so k parallel slots cost about one call per k trials.
    The trials of a batch share ``hpo:llm_call`` (the number of the call that produced the
    proposals, as in the dump file names) and ``hpo:batch`` (``"i/n"``). The call's whole
    usage (``hpo:tokens_in``, ``hpo:tokens_out``, ``hpo:cost_usd``) and wall time
    (``hpo:latency_s``) are attributed to the FIRST trial of the batch; the others record
    zeros, so the per-trial figures add up to the study totals.

    Study user attrs keep running totals (read back from storage, so a resumed study keeps
    counting against ``max_tokens`` / ``max_usd``): ``hpo:tokens_in_total``,
    ``hpo:tokens_out_total``, ``hpo:cost_usd_total``, ``hpo:llm_calls_total`` (LLM requests),
    ``hpo:fallback_total`` (whole-fallback trials), and ``hpo:stop`` once the planner asks to
    stop (then :attr:`stop_requested` is True for this sampler; a resumed study is not stopped
    again by the old attr). The rationale is also saved as the trial's optuna-dashboard note,
    and the chain's latest diagnosis as the study note.

    Nothing the LLM returns is executed; LLM failures never raise out of the sampler.

    Args:
        chain: The agent chain; None runs every trial from the fallback (with one warning).
        search_space: The search space with defaults and descriptions. Without it
            (define-by-run) the relative search space is the intersection of the finished
            trials' distributions, empty until a trial finished.
        fallback: The classical sampler for startup, failures and left-out parameters;
            ``TPESampler(seed=seed)`` by default.
        baseline: Whether the first trial takes the configured defaults.
        fallback_share: Probability in [0, 1] that a trial comes from the fallback anyway.
        batch_size: Proposals asked per chain call (>= 1); the sweeper sets it to its free
            slots with :meth:`set_batch_size`.
        seed: Seed of the sampler's RNG and of the default fallback.
        max_tokens: Budget of LLM tokens (input + output) for the study; then fallback.
        max_usd: Budget of LLM cost in US dollars for the study; then fallback.
        dump_dir: Folder for an audit copy of every LLM call (``call-0001-proposer.json``),
            secrets redacted. Use one folder per study.
        objective_names: Names of the objectives for the prompts; default: the study's
            metric names, else ``value``.
        context: Extra text for the prompts (task description, hardware, ...).

    Raises:
        ValueError: On an invalid argument or combination.
    """

    def __init__(
        self,
        *,
        chain: AgentChain | None = None,
        search_space: Sequence[ParamSpec] | None = None,
        fallback: BaseSampler | None = None,
        baseline: bool = True,
        fallback_share: float = 0.0,
        batch_size: int = 1,
        seed: int | None = None,
        max_tokens: int | None = None,
        max_usd: float | None = None,
        dump_dir: str | Path | None = None,
        objective_names: Sequence[str] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(fallback_share, bool) or not isinstance(fallback_share, int | float):
            raise ValueError(
                f"fallback_share={fallback_share!r} is not a number: pass a float in [0, 1]."
            )
        if not 0.0 <= fallback_share <= 1.0:
            raise ValueError(
                f"fallback_share={fallback_share!r} is outside [0, 1]: pass a probability, "
                "e.g. 0.2 for one trial in five from the fallback sampler."
            )
        _check_batch_size(batch_size)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise ValueError(
                f"max_tokens={max_tokens!r} is not a positive integer: pass e.g. 200000, "
                "or None for no token budget."
            )
        if max_usd is not None and (
            isinstance(max_usd, bool) or not isinstance(max_usd, int | float) or max_usd <= 0
        ):
            raise ValueError(
                f"max_usd={max_usd!r} is not a positive number: pass e.g. 5.0, "
                "or None for no cost budget."
            )
        if fallback is not None and not isinstance(fallback, BaseSampler):
            raise ValueError(
                f"fallback={fallback!r} is not an Optuna sampler: pass e.g. "
                "optuna.samplers.TPESampler(), or None for the default."
            )
        if isinstance(fallback, LLMSampler):
            raise ValueError(
                "fallback is an LLMSampler: pass a classical sampler such as TPESampler."
            )
        if objective_names is not None and (
            isinstance(objective_names, str)
            or not all(isinstance(n, str) for n in objective_names)
        ):
            raise ValueError(
                f"objective_names={objective_names!r} is not a list of strings: "
                'pass e.g. ["val/acc"].'
            )
        if context is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in context.items()
        ):
            raise ValueError(
                "context must map strings to strings: convert its values with str() first."
            )

        self._chain = chain
        self._specs: dict[str, ParamSpec] | None = None
        if search_space is not None:
            self._specs = _spec_dict(search_space)
        self._fallback = fallback if fallback is not None else TPESampler(seed=seed)
        self._baseline = bool(baseline)
        self._fallback_share = float(fallback_share)
        self._batch_size = batch_size
        self._rng = random.Random(seed)
        self._max_tokens = max_tokens
        self._max_usd = None if max_usd is None else float(max_usd)
        self._dump_dir = Path(dump_dir) if dump_dir is not None else None
        self._objective_names = list(objective_names) if objective_names is not None else None
        self._context = dict(context) if context is not None else {}

        self._lock = threading.RLock()
        self._local = threading.local()
        self._queue: deque[_Queued] = deque()
        self._key_names: list[str] = []
        self._trial_keys: dict[int, tuple[Any, ...]] = {}
        self._intersections: dict[tuple[int, int], IntersectionSearchSpace] = {}
        self._stop_reason: str | None = None
        self._disabled_reason: str | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ public API

    @property
    def stop_requested(self) -> bool:
        """Whether the chain's planner asked to end the study (see :attr:`stop_reason`)."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Why the planner asked to stop, or None."""
        return self._stop_reason

    @property
    def search_space(self) -> list[ParamSpec] | None:
        """The configured search space, or None (define-by-run)."""
        return None if self._specs is None else list(self._specs.values())

    @property
    def batch_size(self) -> int:
        """How many proposals one chain call asks for."""
        return self._batch_size

    @property
    def fallback(self) -> BaseSampler:
        """The classical sampler used for startup, failures and left-out parameters."""
        return self._fallback

    def set_search_space(self, specs: Sequence[ParamSpec] | None) -> None:
        """Replace the search space (None: define-by-run); queued proposals are discarded.

        Raises:
            ValueError: When an entry is not a ParamSpec or a name repeats.
        """
        new = None if specs is None else _spec_dict(specs)
        with self._lock:
            self._specs = new
            self._queue.clear()

    def set_batch_size(self, k: int) -> None:
        """Ask the chain for ``k`` proposals per call from now on (one per free slot).

        Raises:
            ValueError: When ``k`` is not an integer >= 1.
        """
        _check_batch_size(k)
        with self._lock:
            self._batch_size = k

    def reseed_rng(self) -> None:
        """Reseed this sampler's RNG and the fallback sampler's."""
        with self._lock:
            self._rng = random.Random()
            self._fallback.reseed_rng()

    # ------------------------------------------------------------------ BaseSampler

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The configured space, or the intersection of the finished trials' spaces."""
        if self._specs is not None:
            return {name: spec.distribution for name, spec in self._specs.items()}
        with self._lock:
            key = (id(study._storage), study._study_id)
            if key not in self._intersections:
                self._intersections[key] = IntersectionSearchSpace()
            space = self._intersections[key].calculate(study)
        return {name: dist for name, dist in space.items() if not dist.single()}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        """Values for ``search_space``: baseline, an LLM proposal, or the fallback's."""
        if not search_space:  # define-by-run before any trial finished
            with self._lock:
                self._set_trial_attrs(
                    study, trial, {SOURCE: "fallback", FALLBACK_REASON: "startup"}
                )
                self._add_totals(study, {FALLBACK_TOTAL: 1})
            return {}
        with self._lock:
            if self._baseline and trial.number == 0:
                params = self._baseline_params(study, trial, search_space)
                if params is not None:
                    return params
            reason = self._pre_call_reason()
            if reason is None and not self._queue:
                reason = self._budget_reason(study) or self._refill(study, trial, search_space)
            if reason is None and not self._queue:
                reason = "no_proposal"
            if reason is not None:
                return self._fallback_trial(study, trial, search_space, reason)
            return self._use_proposal(study, trial, search_space, self._queue.popleft())

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Delegates to the fallback sampler (parameters outside the relative space)."""
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Forwards to the fallback sampler."""
        if getattr(self._local, "in_note", False):
            return  # a Trial handle made only to save a dashboard note
        self._fallback.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Forwards to the fallback sampler."""
        self._fallback.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ paths of a trial

    def _pre_call_reason(self) -> str | None:
        """Why this trial skips the LLM before looking at the queue, or None."""
        if self._stop_reason is not None:
            return "stop"
        if self._chain is None:
            if self._first("no_llm"):
                # info, not a warning: build_chain already warned loudly (once) when
                # credentials are missing, and agent=none is the user's own choice
                _logger.info(
                    "LLMSampler has no agent chain: every trial comes from the fallback "
                    "sampler %s.",
                    type(self._fallback).__name__,
                )
            return "no_llm"
        if self._fallback_share > 0.0 and self._rng.random() < self._fallback_share:
            return "share"
        if self._disabled_reason is not None and not self._queue:
            return self._disabled_reason
        return None

    def _budget_reason(self, study: optuna.Study) -> str | None:
        if self._max_tokens is None and self._max_usd is None:
            return None
        totals = study.user_attrs
        tokens = int(totals.get(TOKENS_IN_TOTAL, 0)) + int(totals.get(TOKENS_OUT_TOTAL, 0))
        cost = float(totals.get(COST_USD_TOTAL, 0.0))
        spent = None
        if self._max_tokens is not None and tokens >= self._max_tokens:
            spent = f"{tokens} tokens used of max_tokens={self._max_tokens}"
        elif self._max_usd is not None and cost >= self._max_usd:
            spent = f"${cost:.4f} spent of max_usd={self._max_usd}"
        if spent is None:
            return None
        self._warn_once(
            "budget",
            "LLM budget spent (%s): the remaining trials come from the fallback sampler %s.",
            spent,
            type(self._fallback).__name__,
        )
        return "budget"

    def _baseline_params(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, dist in search_space.items():
            spec = (self._specs or {}).get(name)
            if spec is None or spec.default is None:
                sources[name] = "fallback"
                continue
            if check_value(dist, spec.default) is None:
                values[name] = _normalize(dist, spec.default)
                sources[name] = "baseline"
                continue
            clamped = clamp_value(dist, spec.default)
            if clamped is not None and check_value(dist, clamped) is None:
                _logger.warning(
                    "Default %s=%r is not valid for %s: the baseline trial uses %r.",
                    name,
                    spec.default,
                    dist,
                    clamped,
                )
                values[name] = _normalize(dist, clamped)
                sources[name] = "clamped"
            else:
                _logger.warning(
                    "Default %s=%r is not valid for %s: the baseline trial samples it from "
                    "the fallback sampler.",
                    name,
                    spec.default,
                    dist,
                )
                sources[name] = "fallback"
        if not values:
            return None
        attrs: dict[str, Any] = {
            SOURCE: "baseline",
            RATIONALE: "Baseline: the configured default of each parameter.",
        }
        if len(set(sources.values())) > 1:
            attrs[PARAM_SOURCES] = sources
        self._set_trial_attrs(study, trial, attrs)
        return self._fill_from_fallback(study, trial, search_space, values)

    def _fallback_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
        reason: str,
    ) -> dict[str, Any]:
        self._set_trial_attrs(study, trial, {SOURCE: "fallback", FALLBACK_REASON: reason})
        self._add_totals(study, {FALLBACK_TOTAL: 1})
        # What the fallback samples relatively, it samples so; the rest independently.
        fb_space = {
            name: dist
            for name, dist in self._fallback.infer_relative_search_space(study, trial).items()
            if search_space.get(name) == dist
        }
        params: dict[str, Any] = {}
        if fb_space:
            sampled = self._fallback.sample_relative(study, trial, fb_space)
            params = {name: value for name, value in sampled.items() if name in fb_space}
        return self._fill_from_fallback(study, trial, search_space, params)

    def _fill_from_fallback(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
        params: dict[str, Any],
    ) -> dict[str, Any]:
        """``params`` completed with the fallback's independent samples for what is missing."""
        for name, dist in search_space.items():
            if name not in params:
                params[name] = self._fallback.sample_independent(study, trial, name, dist)
        return params

    def _use_proposal(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
        item: _Queued,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, dist in search_space.items():
            value = item.values.get(name)
            if name in item.values and check_value(dist, value) is None:
                values[name] = _normalize(dist, value)
                sources[name] = item.sources.get(name, "llm")
            else:
                sources[name] = "fallback"
        if not values:
            return self._fallback_trial(study, trial, search_space, "no_proposal")
        used = {s for s in sources.values() if s in _LLM_SOURCES}
        source = max(used, key=_LLM_SOURCES.index)
        attrs: dict[str, Any] = {
            SOURCE: source,
            LLM_CALL: item.call_id,
            BATCH: item.batch,
            TOKENS_IN: item.usage.input_tokens,
            TOKENS_OUT: item.usage.output_tokens,
            COST_USD: round(item.usage.cost_usd, 8),
            LATENCY_S: round(item.latency_s, 3),
        }
        if item.rationale:
            attrs[RATIONALE] = item.rationale
        if item.step is not None:
            attrs[STEP] = item.step
        if len(set(sources.values())) > 1:
            attrs[PARAM_SOURCES] = sources
        if item.dropped_params:
            attrs[DROPPED_PARAMS] = item.dropped_params
        if item.dropped_proposals:
            attrs[DROPPED_PROPOSALS] = item.dropped_proposals
        self._set_trial_attrs(study, trial, attrs)
        if item.rationale:
            self._save_trial_note(
                study, trial, f"**{source}** ({item.call_id})\n\n{item.rationale}"
            )
        return self._fill_from_fallback(study, trial, search_space, values)

    # ------------------------------------------------------------------ the chain call

    def _refill(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> str | None:
        """One chain call (plus at most one repair) that refills the queue.

        Returns:
            A fallback reason when the call failed or asked to stop, else None.
        """
        assert self._chain is not None
        view = self._build_view(study, search_space)
        spent = _Spent()
        t0 = time.perf_counter()
        try:
            result = self._chain.propose(view)
        except Exception as exc:  # an LLM failure must never end the study
            spent.add_failure(exc)
            if spent.calls or spent.usage != Usage():
                self._account(study, trial, spent)
            return self._chain_failed(exc, "propose")
        spent.add(result)
        if result.diagnosis:
            self._save_study_note(study, result.diagnosis)

        if result.stop:
            self._stop_reason = result.stop_reason or "the planner asked to stop"
            study.set_user_attr(STOP, redact(self._stop_reason))
            _logger.warning("The planner asked to stop the study: %s", self._stop_reason)
            self._account(study, trial, spent)
            self._queue.clear()
            return "stop"

        candidates = [
            _check_proposal(i + 1, dict(p.params), p.rationale, search_space)
            for i, p in enumerate(result.proposals)
        ]
        errors = [
            f"proposal {c.index}: parameter {name!r} {msg}"
            if msg == "is missing"
            else f"proposal {c.index}: parameter {name!r}: {msg}"
            for c in candidates
            for name, msg in c.problems.items()
        ]
        if errors:
            _logger.info(
                "%d problem(s) in the proposals, asking the chain for a repair: %s",
                len(errors),
                "; ".join(errors[:5]),
            )
            try:
                repaired = self._chain.repair(view, result, errors)
            except Exception as exc:
                spent.add_failure(exc)
                self._chain_failed(exc, "repair", fatal=False)
            else:
                spent.add(repaired)
                if repaired.diagnosis and repaired.diagnosis != result.diagnosis:
                    self._save_study_note(study, repaired.diagnosis)
                _apply_repair(
                    candidates, [dict(p.params) for p in repaired.proposals], search_space
                )
            for c in candidates:
                _clamp_rest(c, search_space)
        latency = time.perf_counter() - t0
        call_id = self._account(study, trial, spent)

        kept, dropped = self._deduplicate(study, candidates, search_space)
        if len(kept) > self._batch_size:
            # a reply with more proposals than asked for: they would be used long after the
            # history they were made from; keep the batch, the rest are dropped (recorded)
            dropped += [f"proposal {c.index}: beyond n_proposals={self._batch_size}"
                        for c in kept[self._batch_size:]]
            kept = kept[: self._batch_size]
        for note in dropped:
            _logger.info("Dropped %s", note)
        n = len(kept)
        for j, c in enumerate(kept):
            self._queue.append(
                _Queued(
                    values=c.values,
                    sources=c.sources,
                    rationale=_one_paragraph(c.rationale),
                    call_id=call_id,
                    batch=f"{j + 1}/{n}",
                    step=result.step,
                    dropped_params=c.unknown,
                    usage=spent.usage if j == 0 else Usage(),
                    latency_s=latency if j == 0 else 0.0,
                    dropped_proposals=dropped if j == 0 else [],
                )
            )
        if not kept:
            _logger.warning(
                "The chain's reply (%s) left no usable proposal: %s",
                call_id,
                "; ".join(dropped) or "it proposed nothing",
            )
        return None

    def _chain_failed(self, exc: Exception, what: str, *, fatal: bool = True) -> str:
        """Log a failed chain call; returns the fallback reason."""
        if not isinstance(exc, LLMError):
            _logger.exception("The LLM chain's %s raised unexpectedly; using the fallback.", what)
            return "llm_error:internal"
        kind = exc.kind
        message = redact(f"{type(exc).__name__}: {exc}")
        level = logging.WARNING if self._first(f"err:{kind}") else logging.INFO
        then = (
            "this trial comes from the fallback sampler"
            if fatal
            else "invalid values are clamped or sampled by the fallback"
        )
        _logger.log(level, "The LLM chain's %s failed (%s): %s.", what, message, then)
        if kind == "auth":
            # Retrying with the same credentials cannot succeed: stop asking.
            self._disabled_reason = "llm_error:auth"
        if kind == "budget":  # the chain's own budget (agent.budget) is spent
            self._disabled_reason = "budget"
            return "budget"
        return f"llm_error:{kind}"

    def _build_view(
        self, study: optuna.Study, search_space: dict[str, BaseDistribution]
    ) -> StudyView:
        from hpo.agents.chain import StudyView

        specs = []
        for name, dist in search_space.items():
            spec = (self._specs or {}).get(name)
            if spec is None:
                specs.append(ParamSpec(name=name, distribution=dist))
            elif spec.distribution != dist:
                specs.append(dataclasses.replace(spec, distribution=dist))
            else:
                specs.append(spec)
        directions = [d.name.lower() for d in study.directions]
        names = self._objective_names
        if names is not None and len(names) != len(directions):
            self._warn_once(
                "objective_names",
                "objective_names=%r has %d name(s) for %d objective(s): the prompts use the "
                "study's metric names instead.",
                names,
                len(names),
                len(directions),
            )
            names = None
        if names is None:
            names = list(study.metric_names or [])
            if len(names) != len(directions):
                names = (
                    ["value"]
                    if len(directions) == 1
                    else [f"value_{i}" for i in range(len(directions))]
                )
        return StudyView(
            space=specs,
            directions=directions,
            objective_names=names,
            trials=study.get_trials(deepcopy=False),
            n_proposals=self._batch_size,
            context=dict(self._context),
        )

    def _deduplicate(
        self,
        study: optuna.Study,
        candidates: list[_Candidate],
        search_space: dict[str, BaseDistribution],
    ) -> tuple[list[_Candidate], list[str]]:
        names = sorted(search_space)
        if self._key_names != names:  # keys of trials are cached per search space
            self._key_names, self._trial_keys = names, {}
        seen: dict[tuple[Any, ...], str] = {}
        for t in study.get_trials(deepcopy=False):
            key = self._trial_keys.get(t._trial_id)
            if key is None:
                params = t.params
                if not all(n in params for n in names):
                    continue  # not (yet) a full point: check again next time
                # a trial's params never change once all are set: key it once
                key = self._trial_keys[t._trial_id] = _key(params, names)
            seen.setdefault(key, f"trial {t.number}")
        for item in self._queue:
            if all(n in item.values for n in names):
                seen.setdefault(_key(item.values, names), "a queued proposal")
        kept: list[_Candidate] = []
        dropped: list[str] = []
        for c in candidates:
            if not c.values:
                dropped.append(f"proposal {c.index}: no valid value")
                continue
            if all(n in c.values for n in names):
                key = _key(c.values, names)
                if key in seen:
                    dropped.append(f"proposal {c.index}: duplicates {seen[key]}")
                    continue
                seen[key] = f"proposal {c.index}"
            kept.append(c)
        return kept, dropped

    # ------------------------------------------------------------------ bookkeeping

    def _account(self, study: optuna.Study, trial: FrozenTrial, spent: _Spent) -> str:
        """Add a chain call to the study totals and dump its records; returns the call id.

        The id names the last LLM request of the call (``call-0007``), as the dump files do.
        """
        first = int(study.user_attrs.get(LLM_CALLS_TOTAL, 0))
        n_calls = max(1, len(spent.calls))
        self._add_totals(
            study,
            {
                TOKENS_IN_TOTAL: spent.usage.input_tokens,
                TOKENS_OUT_TOTAL: spent.usage.output_tokens,
                COST_USD_TOTAL: spent.usage.cost_usd,
                LLM_CALLS_TOTAL: n_calls,
            },
        )
        if self._dump_dir is not None:
            for i, record in enumerate(spent.calls):
                self._dump(first + i + 1, record, study, trial)
        return f"call-{first + n_calls:04d}"

    def _dump(self, number: int, record: Any, study: optuna.Study, trial: FrozenTrial) -> None:
        assert self._dump_dir is not None
        role = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(record, "role", "call"))) or "call"
        doc = {
            "call": f"call-{number:04d}",
            "study": study.study_name,
            "trial": trial.number,
            "role": getattr(record, "role", None),
            "provider": getattr(record, "provider", None),
            "model": getattr(record, "model", None),
            "cached": getattr(record, "cached", None),
            "error": getattr(record, "error", None),
            "latency_s": getattr(record, "latency_s", None),
            "usage": _jsonable(getattr(record, "usage", None)),
            "system": getattr(record, "system", None),
            "messages": _jsonable(getattr(record, "messages", None)),
            "raw_text": getattr(record, "raw_text", None),
        }
        try:
            self._dump_dir.mkdir(parents=True, exist_ok=True)
            text = redact(json.dumps(redact_obj(doc), indent=2, ensure_ascii=False, default=str))
            path = self._dump_dir / f"call-{number:04d}-{role}.json"
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            self._warn_once(
                "dump", "Cannot write LLM call dumps under %s: %s", self._dump_dir, exc
            )

    def _add_totals(self, study: optuna.Study, deltas: Mapping[str, float]) -> None:
        attrs = study.user_attrs
        for key, delta in deltas.items():
            if key == COST_USD_TOTAL:
                study.set_user_attr(key, round(float(attrs.get(key, 0.0)) + delta, 8))
            else:
                study.set_user_attr(key, int(attrs.get(key, 0)) + int(delta))

    def _set_trial_attrs(
        self, study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]
    ) -> None:
        for key, value in attrs.items():
            if isinstance(value, str):
                value = redact(value)
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
            # Mirror into the frozen trial we were given, as Trial.set_user_attr does: it is the
            # live Trial's cache, so `study.ask().user_attrs` shows the provenance at once.
            trial.user_attrs[key] = value

    def _save_trial_note(self, study: optuna.Study, trial: FrozenTrial, text: str) -> None:
        try:
            from optuna_dashboard import save_note

            self._local.in_note = True
            try:
                handle = optuna.trial.Trial(study, trial._trial_id)
            finally:
                self._local.in_note = False
            save_note(handle, redact(text))
        except Exception as exc:  # a note is a nicety; never fail a trial for it
            _logger.debug("Cannot save the dashboard note of trial %d: %s", trial.number, exc)

    def _save_study_note(self, study: optuna.Study, text: str) -> None:
        try:
            from optuna_dashboard import save_note

            save_note(study, redact(f"## Diagnosis\n\n{text}"))
        except Exception as exc:
            _logger.debug("Cannot save the dashboard note of the study: %s", exc)

    def _first(self, key: str) -> bool:
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if self._first(key):
            _logger.warning(msg, *args)


# ---------------------------------------------------------------------- the checker


def _check_proposal(
    index: int, params: dict[str, Any], rationale: str, space: dict[str, BaseDistribution]
) -> _Candidate:
    c = _Candidate(index=index, raw=params, rationale=str(rationale or ""))
    c.unknown = sorted(str(k) for k in params if k not in space)
    for name, dist in space.items():
        if name not in params or params[name] is None:
            c.problems[name] = "is missing"
            continue
        msg = check_value(dist, params[name])
        if msg is None:
            c.values[name] = _normalize(dist, params[name])
            c.sources[name] = "llm"
        else:
            c.problems[name] = msg
    return c


def _apply_repair(
    candidates: list[_Candidate],
    repaired: list[dict[str, Any]],
    space: dict[str, BaseDistribution],
) -> None:
    """Take the repaired values of the parameters that had problems.

    A repair reply either restates the whole batch (same length, matched by position) or lists
    only the corrected proposals (matched in order to the proposals that had problems).
    """
    invalid = [c for c in candidates if c.problems]
    if len(repaired) == len(candidates):
        pairs = [(c, repaired[i]) for i, c in enumerate(candidates) if c.problems]
    else:
        pairs = list(zip(invalid, repaired, strict=False))
    for c, params in pairs:
        for name in list(c.problems):
            if name not in params or params[name] is None:
                continue
            if check_value(space[name], params[name]) is None:
                c.values[name] = _normalize(space[name], params[name])
                c.sources[name] = "repaired"
                del c.problems[name]
            else:
                c.raw[name] = params[name]  # clamp the repaired value, the newer guess


def _clamp_rest(c: _Candidate, space: dict[str, BaseDistribution]) -> None:
    """Clamp what is still invalid; what cannot be clamped is left to the fallback."""
    for name in list(c.problems):
        if name in c.raw and c.raw[name] is not None:
            clamped = clamp_value(space[name], c.raw[name])
            if clamped is not None and check_value(space[name], clamped) is None:
                c.values[name] = _normalize(space[name], clamped)
                c.sources[name] = "clamped"
                del c.problems[name]


def _normalize(dist: BaseDistribution, value: Any) -> Any:
    """The value with the Python type Optuna expects (int for ints, the choice object)."""
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        value = float(value)
        if dist.step is not None:  # snap onto the grid Optuna checks with a tighter tolerance
            k = round((value - dist.low) / dist.step)
            value = min(max(dist.low + k * dist.step, dist.low), dist.high)
        return value
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
    return value


def _key(params: Mapping[str, Any], names: list[str]) -> tuple[Any, ...]:
    out: list[Any] = []
    for n in names:
        v = params[n]
        if isinstance(v, float):
            v = float(f"{v:.10g}")
        out.append((n, type(v).__name__ if isinstance(v, bool) else "", v))
    return tuple(out)


def _one_paragraph(text: str, limit: int = _RATIONALE_MAX_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return str(obj)


def _spec_dict(specs: Sequence[ParamSpec]) -> dict[str, ParamSpec]:
    out: dict[str, ParamSpec] = {}
    for spec in specs:
        if not isinstance(spec, ParamSpec):
            raise ValueError(
                f"search_space entry {spec!r} is not a ParamSpec: build it with "
                "hpo.space.ParamSpec(name=..., distribution=...)."
            )
        if spec.name in out:
            raise ValueError(
                f"search_space names {spec.name!r} twice: give each parameter one ParamSpec."
            )
        out[spec.name] = spec
    return out


def _check_batch_size(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"batch_size={k!r} is not an integer >= 1: pass the number of parallel trial "
            "slots, e.g. 4."
        )
