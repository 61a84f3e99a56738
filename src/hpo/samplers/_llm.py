"""``LLMSampler``: an Optuna sampler whose proposals come from an LLM agent chain.

Knows Optuna and the agent-chain protocol, nothing of Hydra. One instance serves many
concurrent asks: a lock guards the proposal queue, and one chain call fills the queue with a
batch of proposals for as many parallel slots.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

# Trial and study user attributes (provenance, running totals, the planner's stop).
from hpo.attrs import (
    BATCH,
    CANDIDATE,
    COST_USD,
    COST_USD_TOTAL,
    DROPPED_PARAMS,
    DROPPED_PROPOSALS,
    FALLBACK_REASON,
    FALLBACK_TOTAL,
    LATENCY_S,
    LEADER,
    LLM_CALL,
    LLM_CALLS_TOTAL,
    PARAM_SOURCES,
    RATIONALE,
    RETRIED,
    SOURCE,
    SOURCE_CHOICE,
    STEP,
    STOP,
    TOKENS_IN,
    TOKENS_IN_TOTAL,
    TOKENS_OUT,
    TOKENS_OUT_TOTAL,
)
from hpo.llm.base import LLMError, LLMMalformedReply, Usage
from hpo.samplers._audit import write_call_dump
from hpo.samplers._checker import (
    Candidate,
    apply_repair,
    check_proposal,
    clamp_rest,
    key,
    normalize,
)
from hpo.samplers._choice import Evidence, SharePolicy, gather_evidence
from hpo.samplers._leader import LEADERS, CmaLeader, UnitScale, build_leader
from hpo.samplers._state import describe_state
from hpo.samplers._stored import DashboardNotes, clean_text, storable
from hpo.secrets import redact
from hpo.space import ParamSpec, check_value, clamp_value

if TYPE_CHECKING:
    from hpo.agents.chain import AgentChain, ChainResult, StudyView, TrialBudget

__all__ = ["MODES", "LLMSampler"]

_logger = logging.getLogger(__name__)

MODES = ("propose", "hybrid")
# How far a value departs from the LLM's proposal, in increasing order.
LLM_SOURCES = ("llm", "repaired", "clamped")
CLASSICAL_SOURCES = ("fallback", "leader", "baseline")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_RATIONALE_MAX_CHARS = 600
_HYBRID_STARTUP = 5
# One line naming the fix, per permanent error kind, when the client gave none.
_FIXES = {
    "auth": "check the API key (the provider's *_API_KEY variable or agent.api_key_env)",
    "model_not_found": "set agent.model to a model the server serves",
    "bad_request": "the server rejects hpo's request: try agent.structured_output=none or "
    "another agent.model",
}


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
    candidate: int | None = None


@dataclass
class _Spent:
    """The LLM requests and usage of one refill (propose plus repair, failed parts included)."""

    calls: list[Any] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def add(self, result: ChainResult) -> None:
        self.calls += list(result.calls)
        self.usage = self.usage + result.usage

    def add_failure(self, exc: Exception) -> None:
        from hpo.agents.chain import ChainError

        if isinstance(exc, ChainError):  # what the chain did before failing
            self.add(exc.result)
        elif isinstance(exc, LLMMalformedReply):
            self.usage = self.usage + exc.usage


class LLMSampler(BaseSampler):
    """Samples trials from proposals of an LLM agent chain, checked against the search space.

    Two modes. ``propose`` (the default): the LLM proposes, the classical ``fallback`` sampler
    fills gaps (startup, failures, its share). ``hybrid``: a classical optimizer, the
    *leader* (CMA-ES rebuilt from every finished trial, TPE or GP), runs the study; a share of
    the trials (``llm_share``) and the trials after a stall come from the LLM, whose prompt
    carries the leader's state (``StudyView.optimizer_state``).

    In both modes the share of trials given to the LLM adapts to how its trials do against
    the classical ones (a bandit with a floor, see :mod:`hpo.samplers._choice`), decided from
    storage only and deterministically from the seed and the trial number; each trial records
    the decision in ``hpo:source_choice`` (``to``, ``p_llm``, ``draw``, ``reason``, ``why``).

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
    - ``leader`` (hybrid): the leader's own trial.
    - ``fallback``: the whole trial from the classical sampler, with ``hpo:fallback_reason``:
      ``startup`` (``startup_trials``, or define-by-run with nothing finished yet),
      ``share`` / ``bandit`` (the source choice), ``no_llm``, ``llm_error:<kind>`` (the
      :class:`~hpo.llm.base.LLMError` kind; ``internal`` for any other exception of the
      chain), ``llm_disabled:<kind>`` (a permanent error such as ``auth`` or
      ``model_not_found`` disabled the LLM for the sweep: no more calls), ``budget``
      (``max_tokens`` / ``max_usd`` spent, counted from the study's totals in storage),
      ``stop`` or ``no_proposal`` (the chain's reply left nothing usable).

    Slots, batches and proposals: the caller runs ``n_jobs`` trials in parallel and passes
    ``batch_size=n_jobs`` (the sweeper does so at construction). When an LLM trial finds the
    queue empty, ONE chain call asks for ``n_proposals`` proposals: of the next
    ``min(batch_size, trials left)`` trials, those the source choice gives to the LLM (at
    least this one), so k parallel slots cost about one call per k LLM trials and the last
    trial asks for one. :meth:`prefetch` makes that call before the trials exist, so the LLM
    wait is not counted in any trial's duration. The trials of a batch share ``hpo:llm_call``
    (the number of the call that produced the proposals, as in the dump file names) and
    ``hpo:batch`` (``"i/n"``). The call's whole usage (``hpo:tokens_in``,
    ``hpo:tokens_out``, ``hpo:cost_usd``) and wall time (``hpo:latency_s``) are attributed to
    the FIRST trial of the batch; the others record zeros, so the per-trial figures add up to
    the study totals.

    The prompt's view of the study carries the trial budget (``n_trials``: finished, running,
    left), the fidelity (what one trial costs, plus the median duration of the complete
    trials) and the task context.

    Study user attrs keep running totals (read back from storage, so a resumed study keeps
    counting against ``max_tokens`` / ``max_usd``): ``hpo:tokens_in_total``,
    ``hpo:tokens_out_total``, ``hpo:cost_usd_total``, ``hpo:llm_calls_total`` (LLM requests),
    ``hpo:fallback_total`` (whole-fallback trials), ``hpo:leader`` (hybrid), and ``hpo:stop``
    once the planner asks to stop (then :attr:`stop_requested` is True for this sampler; a
    resumed study is not stopped again by the old attr). The rationale is also saved as the
    trial's optuna-dashboard note, and the chain's latest diagnosis as the study note.

    Nothing the LLM returns is executed; LLM failures never raise out of the sampler.

    Args:
        chain: The agent chain; None runs every trial from the classical sampler.
        search_space: The search space with defaults and descriptions. Without it
            (define-by-run) the relative search space is the intersection of the finished
            trials' distributions, empty until a trial finished.
        fallback: The classical sampler for startup, failures and left-out parameters;
            ``TPESampler(seed=seed)`` by default. In hybrid mode: the leader's sampler of the
            categorical and conditional parameters (and the leader itself for ``tpe``).
        baseline: Whether the first trial takes the configured defaults.
        fallback_share: Propose mode: the share of trials left to the fallback anyway, in
            [0, 1] (the LLM's share asked for is ``1 - fallback_share``).
        batch_size: Proposals asked per chain call at most (>= 1): the caller's parallel
            slots.
        seed: Seed of the source choice, of the leader and of the default fallback.
        max_tokens: Budget of LLM tokens (input + output) for the study; then fallback.
        max_usd: Budget of LLM cost in US dollars for the study; then fallback.
        dump_dir: Folder for an audit copy of every LLM call (``call-0001-proposer.json``):
            the exact request and reply, secrets redacted. Use one folder per study.
        objective_names: Names of the objectives for the prompts; default: the study's
            metric names, else ``value``.
        context: Extra text for the prompts (task description, hardware, ...).
        mode: ``propose`` or ``hybrid``.
        n_trials: The study's trial budget (None: open-ended); shown to the LLM and caps
            the proposals per call.
        fidelity: What one trial costs, e.g. "up to 20 epochs per trial".
        leader: Hybrid: ``auto`` (CMA-ES when numeric parameters dominate, else TPE),
            ``cmaes``, ``tpe`` or ``gp``.
        llm_share: Hybrid: the share of trials asked of the LLM, in [0, 1].
        llm_floor: The lowest share the bandit may cut the LLM to, in [0, 1].
        adaptive_share: Whether the bandit adapts the LLM's share (damage control).
        startup_trials: Trials (by number, the baseline included) that come from the
            classical sampler before the first LLM call; None: 1 with a baseline else 0 in
            propose mode, 5 in hybrid mode.
        stall_trials: Hybrid: finished trials without improvement after which the LLM gets
            the next ``stall_trials`` trials (0: off).
        rank_candidates: Hybrid with CMA-ES: show the LLM this many of the leader's draws and
            snap its proposals to the nearest one (0: off).

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
        mode: Literal["propose", "hybrid"] = "propose",
        n_trials: int | None = None,
        fidelity: str | None = None,
        leader: str = "auto",
        llm_share: float = 0.25,
        llm_floor: float = 0.05,
        adaptive_share: bool = True,
        startup_trials: int | None = None,
        stall_trials: int = 10,
        rank_candidates: int = 0,
    ) -> None:
        _check_unit("fallback_share", fallback_share, "e.g. 0.2 for one trial in five from "
                    "the fallback sampler")
        _check_unit("llm_share", llm_share, "e.g. 0.25 for one trial in four from the LLM")
        _check_unit("llm_floor", llm_floor, "e.g. 0.05 so the LLM is still tried")
        _check_batch_size(batch_size)
        _check_count("max_tokens", max_tokens, 1, "e.g. 200000, or None for no token budget")
        if max_usd is not None and (
            isinstance(max_usd, bool) or not isinstance(max_usd, int | float) or max_usd <= 0
        ):
            raise ValueError(
                f"max_usd={max_usd!r} is not a positive number: pass e.g. 5.0, "
                "or None for no cost budget."
            )
        _check_count("n_trials", n_trials, 1, "the study's trial budget, or None")
        _check_count("startup_trials", startup_trials, 0, "e.g. 5, or None for the default")
        _check_count("stall_trials", stall_trials, 0, "e.g. 10, or 0 for no stall rule")
        _check_count("rank_candidates", rank_candidates, 0, "e.g. 4, or 0 for off")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is unknown: pass one of {', '.join(MODES)}.")
        if mode == "hybrid" and fallback_share:
            raise ValueError(
                f"fallback_share={fallback_share!r} applies to mode='propose': in hybrid mode "
                "set llm_share (the LLM's share) instead."
            )
        if rank_candidates and mode != "hybrid":
            raise ValueError(
                f"rank_candidates={rank_candidates!r} needs mode='hybrid' (the LLM ranks the "
                "leader's draws): set mode='hybrid' or rank_candidates=0."
            )
        if str(leader).strip().lower() not in LEADERS:
            raise ValueError(f"leader={leader!r} is unknown: pass one of {', '.join(LEADERS)}.")
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
        if fidelity is not None and not isinstance(fidelity, str):
            raise ValueError(f"fidelity={fidelity!r} is not text: pass e.g. "
                             '"up to 20 epochs per trial", or None.')

        self._chain = chain
        self._specs: dict[str, ParamSpec] | None = None
        if search_space is not None:
            self._specs = _spec_dict(search_space)
        self._mode = mode
        self._leader_name: str | None = None
        classical = fallback if fallback is not None else TPESampler(seed=seed)
        if mode == "hybrid":
            self._leader_name, classical = build_leader(
                leader, search_space=search_space, seed=seed, fallback=classical
            )
            if rank_candidates and not isinstance(classical, CmaLeader):
                raise ValueError(
                    f"rank_candidates={rank_candidates!r} needs the CMA-ES leader, not "
                    f"{self._leader_name}: set leader='cmaes' or rank_candidates=0."
                )
        self._fallback = classical
        self._baseline = bool(baseline)
        self._fallback_share = float(fallback_share)
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._max_usd = None if max_usd is None else float(max_usd)
        self._dump_dir = Path(dump_dir) if dump_dir is not None else None
        self._objective_names = list(objective_names) if objective_names is not None else None
        self._context = dict(context) if context is not None else {}
        self._n_trials = n_trials
        self._fidelity = fidelity
        self._rank_candidates = int(rank_candidates)
        if startup_trials is None:
            startup_trials = _HYBRID_STARTUP if mode == "hybrid" else int(self._baseline)
        self._policy = SharePolicy(
            base=float(llm_share) if mode == "hybrid" else 1.0 - self._fallback_share,
            floor=float(llm_floor),
            adaptive=bool(adaptive_share),
            startup_trials=startup_trials,
            stall_trials=stall_trials if mode == "hybrid" else 0,
            salt=seed if seed is not None else random.SystemRandom().randrange(2**31),
        )

        self._lock = threading.RLock()
        self._notes = DashboardNotes()
        self._queue: deque[_Queued] = deque()
        self._key_names: list[str] = []
        self._trial_keys: dict[int, tuple[Any, ...]] = {}
        self._intersections: dict[tuple[int, int], IntersectionSearchSpace] = {}
        self._failed_for: dict[int, str] = {}  # prefetch failed: trial number -> reason
        self._stop_reason: str | None = None
        self._disabled_reason: str | None = None
        self._leader_noted = False
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
        """The most proposals one chain call asks for (the caller's parallel slots)."""
        return self._batch_size

    @property
    def fallback(self) -> BaseSampler:
        """The classical sampler: the fallback in propose mode, the leader in hybrid mode."""
        return self._fallback

    @property
    def mode(self) -> str:
        """``propose`` or ``hybrid``."""
        return self._mode

    @property
    def leader(self) -> str | None:
        """Hybrid mode: the leader's name (``cmaes``, ``tpe``, ``gp``); else None."""
        return self._leader_name

    @property
    def llm_disabled(self) -> str | None:
        """Why the LLM is no longer asked in this sweep (``llm_disabled:<kind>``), or None.

        A spent ``max_tokens`` / ``max_usd`` is not recorded here: it is read from storage
        before each call (fallback reason ``budget``)."""
        return self._disabled_reason

    def set_search_space(self, specs: Sequence[ParamSpec] | None) -> None:
        """Replace the search space (None: define-by-run); queued proposals are discarded.

        Raises:
            ValueError: When an entry is not a ParamSpec or a name repeats.
        """
        new = None if specs is None else _spec_dict(specs)
        with self._lock:
            self._specs = new
            self._queue.clear()
            if isinstance(self._fallback, CmaLeader):
                self._fallback.set_search_space(specs)

    def set_batch_size(self, k: int) -> None:
        """Ask the chain for at most ``k`` proposals per call from now on.

        The sweeper passes ``batch_size=n_jobs`` at construction and does not call this; it is
        for callers whose number of parallel slots changes during a study.

        Raises:
            ValueError: When ``k`` is not an integer >= 1.
        """
        _check_batch_size(k)
        with self._lock:
            self._batch_size = k

    def reseed_rng(self) -> None:
        """Reseed the classical sampler's RNG.

        The choice between the LLM and the classical sampler depends only on the seed and the
        trial number (no RNG state), so it is not reseeded: reruns choose the same.
        """
        with self._lock:
            self._fallback.reseed_rng()

    def prefetch(self, study: optuna.Study, n: int) -> int:
        """Make the LLM call for the next ``n`` trials now, before they exist.

        A caller that fills slots calls this before ``study.ask()``: the LLM's wait is then
        recorded as ``hpo:latency_s`` of the first trial of the batch and not counted in any
        trial's duration; the asks pop the queued proposals. Of the next ``max(n, batch_size)``
        trial numbers (the baseline skipped, capped by the trials left), those the source choice
        gives to the LLM are asked for, less the proposals already queued: one call serves every
        slot, as without prefetch. Calls that fail are recorded on the trials they were
        for (their fallback reason), which do not call again. Thread-safe; without prefetch
        every LLM trial with an empty queue makes the call itself.

        Args:
            study: The study the next trials belong to.
            n: How many trials the caller is about to ask (its free slots).

        Returns:
            How many proposals are queued now.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return len(self._queue)
        with self._lock:
            if self._chain is None or self._stop_reason or self._disabled_reason:
                return len(self._queue)
            trials = study.get_trials(deepcopy=False)
            space = self._space(study)
            if not space:
                return len(self._queue)
            # The asks about to come (the next n trial numbers) call only when the queue cannot
            # serve their LLM trials; then one call serves the whole batch (every slot), as
            # without prefetch: the next batch_size numbers the LLM gets, within the trials left.
            start = len(trials)
            budget = self._trial_budget(trials)
            end = start + budget.left if budget is not None else None
            self._failed_for = {i: r for i, r in self._failed_for.items() if i >= start}
            evidence = self._evidence(study, trials)

            def llm_numbers(count: int) -> list[int]:
                out: list[int] = []
                i = start
                while i < start + count and (end is None or i < end):
                    if (not (self._baseline and i == 0) and i not in self._failed_for
                            and self._policy.decide(i, evidence).to == "llm"):
                        out.append(i)
                    i += 1
                return out

            if len(llm_numbers(n)) <= len(self._queue):
                return len(self._queue)
            # the baseline trial 0 takes no proposal: look one number further
            ahead = max(n, self._batch_size) + (1 if self._baseline and start == 0 else 0)
            llm = llm_numbers(ahead)[: max(n, self._batch_size)]
            want = len(llm) - len(self._queue)
            if want <= 0 or self._budget_reason(study) is not None:
                return len(self._queue)
            reason = self._refill(study, space, trials, want, label="prefetched")
            if reason is not None:
                for i in llm:
                    self._failed_for[i] = reason
            return len(self._queue)

    # ------------------------------------------------------------------ BaseSampler

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The configured space, or the intersection of the finished trials' spaces."""
        return self._space(study)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        """Values for ``search_space``: baseline, an LLM proposal, or the classical sampler's."""
        if not search_space:  # define-by-run before any trial finished
            with self._lock:
                self._set_trial_attrs(
                    study, trial, {SOURCE: "fallback", FALLBACK_REASON: "startup"}
                )
                self._add_totals(study, {FALLBACK_TOTAL: 1})
            return {}
        with self._lock:
            if self._leader_name is not None and not self._leader_noted:
                study.set_user_attr(LEADER, self._leader_name)
                self._leader_noted = True
            if self._baseline and trial.number == 0:
                params = self._baseline_params(study, trial, search_space)
                if params is not None:
                    return params
            if self._stop_reason is not None:
                return self._fallback_trial(study, trial, search_space, "stop")
            if self._chain is None:
                self._say_no_llm()
                return self._fallback_trial(study, trial, search_space, "no_llm")
            trials = study.get_trials(deepcopy=False)
            evidence = self._evidence(study, trials)
            choice = self._policy.decide(trial.number, evidence)
            self._set_trial_attrs(study, trial, {SOURCE_CHOICE: choice.as_attr()})
            if choice.to == "classical":
                if self._mode == "hybrid":
                    return self._classical_trial(study, trial, search_space, {SOURCE: "leader"})
                return self._fallback_trial(study, trial, search_space, choice.reason)
            reason = self._failed_for.pop(trial.number, None) if not self._queue else None
            if reason is None and self._disabled_reason is not None and not self._queue:
                reason = self._disabled_reason
            if reason is None and not self._queue:
                reason = self._budget_reason(study) or self._refill(
                    study, search_space, trials, self._wanted(trials, trial.number, evidence),
                    label=trial.number,
                )
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
        """Delegates to the classical sampler (parameters outside the relative space)."""
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Forwards to the classical sampler."""
        self._fallback.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Forwards to the classical sampler."""
        self._fallback.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ decisions

    def _space(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        if self._specs is not None:
            return {name: spec.distribution for name, spec in self._specs.items()}
        with self._lock:
            k = (id(study._storage), study._study_id)
            if k not in self._intersections:
                self._intersections[k] = IntersectionSearchSpace()
            space = self._intersections[k].calculate(study)
        return {name: dist for name, dist in space.items() if not dist.single()}

    def _evidence(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> Evidence:
        directions = [d.name.lower() for d in study.directions]
        return gather_evidence(trials, directions, source_kind, window=self._policy.window)

    def _wanted(self, trials: Sequence[FrozenTrial], number: int, evidence: Evidence) -> int:
        """Proposals for this call: of the next ``min(batch_size, left)`` trials from this one,
        those the source choice gives to the LLM (this one included)."""
        budget = self._trial_budget(trials)
        window = self._batch_size if budget is None else min(self._batch_size, budget.left)
        if window <= 1:
            return 1
        return 1 + sum(
            1 for i in range(number + 1, number + window)
            if self._policy.decide(i, evidence).to == "llm"
        )

    def _trial_budget(self, trials: Sequence[FrozenTrial]) -> TrialBudget | None:
        """Where the study stands against ``n_trials`` (None: no budget).

        Finished: complete, pruned or failed trials, except failures re-run as another trial
        (``hpo:retried``). Running: trials in flight that already have their parameters; those
        still waiting for them (the one being proposed among them) count as left.
        """
        if self._n_trials is None:
            return None
        from hpo.agents.chain import TrialBudget

        finished = running = 0
        for t in trials:
            if t.state in _FINISHED:
                finished += not t.user_attrs.get(RETRIED, False)
            elif t.state == TrialState.RUNNING and (t.params or SOURCE in t.user_attrs):
                running += 1
        left = max(0, self._n_trials - finished - running)
        return TrialBudget(
            n_trials=self._n_trials, finished=finished, running=running, left=left
        )

    def _fidelity_text(self, trials: Sequence[FrozenTrial]) -> str | None:
        """The configured fidelity plus the median duration of the complete trials."""
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
        ]
        parts = [self._fidelity] if self._fidelity else []
        if durations:
            parts.append(f"median trial {_duration(statistics.median(durations))}")
        return "; ".join(parts) or None

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
            "LLM budget spent (%s): the remaining trials come from the classical sampler %s.",
            spent,
            type(self._fallback).__name__,
        )
        return "budget"

    def _say_no_llm(self) -> None:
        if self._first("no_llm"):
            # info, not a warning: build_chain already warned loudly (once) when credentials
            # are missing, and agent=none is the user's own choice
            _logger.info(
                "LLMSampler has no agent chain: every trial comes from the classical sampler "
                "%s.",
                type(self._fallback).__name__,
            )

    # ------------------------------------------------------------------ paths of a trial

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
                values[name] = normalize(dist, spec.default)
                # clamped by the sweep's plan (which said so once): the config's value was
                # outside the range
                sources[name] = "baseline" if spec.configured_default is None else "clamped"
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
                values[name] = normalize(dist, clamped)
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
        clamped = [n for n, s in sources.items() if s == "clamped"]
        rationale = "Baseline: the configured default of each parameter."
        if clamped:
            rationale = ("Baseline: the configured default of each parameter, clamped into its "
                         f"range for {', '.join(clamped)}.")
        attrs: dict[str, Any] = {SOURCE: "baseline", RATIONALE: rationale}
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
        self._add_totals(study, {FALLBACK_TOTAL: 1})
        return self._classical_trial(
            study, trial, search_space, {SOURCE: "fallback", FALLBACK_REASON: reason}
        )

    def _classical_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
        attrs: Mapping[str, Any],
    ) -> dict[str, Any]:
        self._set_trial_attrs(study, trial, attrs)
        # What the classical sampler samples relatively, it samples so; the rest independently.
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
                values[name] = normalize(dist, value)
                sources[name] = item.sources.get(name, "llm")
            else:
                sources[name] = "fallback"
        if not values:
            return self._fallback_trial(study, trial, search_space, "no_proposal")
        used = {s for s in sources.values() if s in LLM_SOURCES}
        source = max(used, key=LLM_SOURCES.index)
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
        if item.candidate is not None:
            attrs[CANDIDATE] = item.candidate
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
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: Sequence[FrozenTrial],
        wanted: int,
        *,
        label: int | str,
    ) -> str | None:
        """One chain call (plus at most one repair) that queues up to ``wanted`` proposals.

        Args:
            label: The trial that will receive the batch's first proposal, or
                ``"prefetched"``; named in the audit dumps.

        Returns:
            A fallback reason when the call failed or asked to stop, else None.
        """
        assert self._chain is not None
        cands: list[dict[str, Any]] = []
        if self._rank_candidates and isinstance(self._fallback, CmaLeader):
            number = label if isinstance(label, int) else len(trials)
            cands = self._fallback.candidates(study, search_space, self._rank_candidates, number)
        view = self._build_view(study, search_space, trials, max(1, wanted), cands)
        spent = _Spent()
        t0 = time.perf_counter()
        try:
            result = self._chain.propose(view)
        except Exception as exc:  # an LLM failure must never end the study
            spent.add_failure(exc)
            if spent.calls or spent.usage != Usage():
                self._account(study, label, spent)
            return self._chain_failed(exc, "propose")
        spent.add(result)
        if result.diagnosis:
            self._save_study_note(study, result.diagnosis)

        if result.stop:
            self._stop_reason = result.stop_reason or "the planner asked to stop"
            study.set_user_attr(STOP, storable(self._stop_reason))
            _logger.warning("The planner asked to stop the study: %s", self._stop_reason)
            self._account(study, label, spent)
            self._queue.clear()
            return "stop"

        candidates = [
            check_proposal(i + 1, dict(p.params), p.rationale, search_space)
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
                apply_repair(
                    candidates, [dict(p.params) for p in repaired.proposals], search_space
                )
            for c in candidates:
                clamp_rest(c, search_space)
        latency = time.perf_counter() - t0
        call_id = self._account(study, label, spent)
        picked = _snap_to_candidates(candidates, cands, search_space) if cands else {}

        kept, dropped = self._deduplicate(study, candidates, search_space)
        n_max = view.n_proposals
        if len(kept) > n_max:
            # a reply with more proposals than asked for: they would be used long after the
            # history they were made from; keep the batch, the rest are dropped (recorded)
            dropped += [f"proposal {c.index}: beyond n_proposals={n_max}" for c in kept[n_max:]]
            kept = kept[:n_max]
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
                    candidate=picked.get(c.index),
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
        """Log a failed chain call; returns the fallback reason.

        A permanent error (``exc.permanent``: bad key, unknown model, a rejected request)
        disables the LLM for the sweep with ONE warning naming the fix; a transient one is
        logged as a warning once per kind, then at INFO, and the next trial asks again.
        """
        if not isinstance(exc, LLMError):
            _logger.exception("The LLM chain's %s raised unexpectedly; using the fallback.", what)
            return "llm_error:internal"
        from hpo.agents.chain import ChainError

        if isinstance(exc, ChainError):  # named by the LLM error behind it
            exc = exc.cause
        kind = exc.kind
        message = redact(f"{type(exc).__name__}: {exc}")
        if exc.permanent:
            if self._disabled_reason is None:
                self._disabled_reason = f"llm_disabled:{kind}"
                fix = getattr(exc, "fix", None) or _FIXES.get(kind, "fix the agent config")
                _logger.warning(
                    "LLM disabled for this sweep: the chain's %s failed with a permanent error "
                    "(%s). Fix: %s. Every remaining trial comes from the classical sampler %s.",
                    what, message, redact(str(fix)).rstrip("."), type(self._fallback).__name__,
                )
            return f"llm_error:{kind}"
        level = logging.WARNING if self._first(f"err:{kind}") else logging.INFO
        then = (
            "this trial comes from the classical sampler, the next one asks again"
            if fatal
            else "invalid values are clamped or sampled by the classical sampler"
        )
        _logger.log(
            level, "The LLM chain's %s failed (%s): %s (transient; later %s errors are logged "
            "at INFO).", what, message, then, kind,
        )
        return f"llm_error:{kind}"

    def _build_view(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        trials: Sequence[FrozenTrial],
        wanted: int,
        candidates: Sequence[Mapping[str, Any]] = (),
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
        budget = self._trial_budget(trials)
        state = None
        if self._mode == "hybrid":
            snapshot = None
            if isinstance(self._fallback, CmaLeader):
                snapshot = self._fallback.snapshot(study, search_space)
            state = describe_state(
                trials=trials,
                space=search_space,
                directions=directions,
                leader=self._leader_name or "tpe",
                snapshot=snapshot,
                candidates=candidates,
            )
        return StudyView(
            space=specs,
            directions=directions,
            objective_names=names,
            trials=list(trials),
            n_proposals=max(1, wanted if budget is None else min(wanted, max(1, budget.left))),
            context=dict(self._context),
            budget=budget,
            fidelity=self._fidelity_text(trials),
            optimizer_state=state,
        )

    def _deduplicate(
        self,
        study: optuna.Study,
        candidates: list[Candidate],
        search_space: dict[str, BaseDistribution],
    ) -> tuple[list[Candidate], list[str]]:
        names = sorted(search_space)
        if self._key_names != names:  # keys of trials are cached per search space
            self._key_names, self._trial_keys = names, {}
        seen: dict[tuple[Any, ...], str] = {}
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            k = self._trial_keys.get(t._trial_id)
            if k is None:
                params = t.params
                if not all(n in params for n in names):
                    continue  # not (yet) a full point: check again next time
                # a trial's params never change once all are set: key it once
                k = self._trial_keys[t._trial_id] = key(params, names)
            seen.setdefault(k, f"trial {t.number}")
        for item in self._queue:
            if all(n in item.values for n in names):
                seen.setdefault(key(item.values, names), "a queued proposal")
        if self._baseline and not trials and self._specs is not None:
            # a prefetched first call comes before the baseline trial exists: it is still taken
            defaults = {n: s.default for n, s in self._specs.items() if s.default is not None}
            if all(n in defaults for n in names):
                seen.setdefault(key(defaults, names), "the baseline (trial 0)")
        kept: list[Candidate] = []
        dropped: list[str] = []
        for c in candidates:
            if not c.values:
                dropped.append(f"proposal {c.index}: no valid value")
                continue
            if all(n in c.values for n in names):
                k = key(c.values, names)
                if k in seen:
                    dropped.append(f"proposal {c.index}: duplicates {seen[k]}")
                    continue
                seen[k] = f"proposal {c.index}"
            kept.append(c)
        return kept, dropped

    # ------------------------------------------------------------------ bookkeeping

    def _account(self, study: optuna.Study, label: int | str, spent: _Spent) -> str:
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
                try:
                    write_call_dump(
                        self._dump_dir, first + i + 1, record, study=study.study_name,
                        trial=label,
                    )
                except OSError as exc:
                    self._warn_once(
                        "dump", "Cannot write LLM call dumps under %s: %s", self._dump_dir, exc
                    )
        return f"call-{first + n_calls:04d}"

    def _add_totals(self, study: optuna.Study, deltas: Mapping[str, float]) -> None:
        attrs = study.user_attrs
        for k, delta in deltas.items():
            if k == COST_USD_TOTAL:
                study.set_user_attr(k, round(float(attrs.get(k, 0.0)) + delta, 8))
            else:
                study.set_user_attr(k, int(attrs.get(k, 0)) + int(delta))

    def _set_trial_attrs(
        self, study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]
    ) -> None:
        for k, value in attrs.items():
            value = storable(value)  # redacted; strings and lists capped
            study._storage.set_trial_user_attr(trial._trial_id, k, value)
            # Mirror into the frozen trial we were given, as Trial.set_user_attr does: it is the
            # live Trial's cache, so `study.ask().user_attrs` shows the provenance at once.
            trial.user_attrs[k] = value

    def _save_trial_note(self, study: optuna.Study, trial: FrozenTrial, text: str) -> None:
        """The trial's optuna-dashboard note: redacted, capped, one piece (see ``_stored``)."""
        try:
            self._notes.trial_note(study._storage, study._study_id, trial._trial_id, text)
        except Exception as exc:  # a note is a nicety; never fail a trial for it
            _logger.debug("Cannot save the dashboard note of trial %d: %s", trial.number, exc)

    def _save_study_note(self, study: optuna.Study, text: str) -> None:
        """The study's optuna-dashboard note (the latest diagnosis), rewritten in one piece."""
        try:
            self._notes.study_note(study._storage, study._study_id, f"## Diagnosis\n\n{text}")
        except Exception as exc:
            _logger.debug("Cannot save the dashboard note of the study: %s", exc)

    def _first(self, k: str) -> bool:
        if k in self._warned:
            return False
        self._warned.add(k)
        return True

    def _warn_once(self, k: str, msg: str, *args: Any) -> None:
        if self._first(k):
            _logger.warning(msg, *args)


def source_kind(trial: FrozenTrial) -> Literal["llm", "classical", "llm_miss"] | None:
    """What a finished trial counts for in the bandit: ``llm`` (llm, repaired, clamped),
    ``llm_miss`` (the LLM's reply left nothing usable: reward 0 for the LLM), ``classical``
    (fallback, leader, and the baseline, the control), or None (trials of other samplers,
    failures re-run as another trial)."""
    attrs = trial.user_attrs
    if attrs.get(RETRIED, False):
        return None
    src = attrs.get(SOURCE)
    if src in LLM_SOURCES:
        return "llm"
    if src == "fallback" and attrs.get(FALLBACK_REASON) == "no_proposal":
        return "llm_miss"
    if src in CLASSICAL_SOURCES:
        return "classical"
    return None


def _snap_to_candidates(
    proposals: list[Candidate],
    cands: Sequence[Mapping[str, Any]],
    space: Mapping[str, BaseDistribution],
) -> dict[int, int]:
    """Replace each proposal's candidate-listed values by the nearest candidate's (unit
    distance over the values both carry); returns proposal index -> 1-based candidate."""
    picked: dict[int, int] = {}
    scales = {
        n: UnitScale.of(n, d)  # type: ignore[arg-type]
        for n, d in space.items()
        if n in cands[0]
    }
    for c in proposals:
        shared = [n for n in scales if n in c.values]
        if not shared:
            continue

        def dist(cand: Mapping[str, Any], shared: list[str] = shared, c: Candidate = c) -> float:
            return sum(
                (scales[n].to_unit(float(cand[n])) - scales[n].to_unit(float(c.values[n]))) ** 2
                for n in shared
            )

        best = min(range(len(cands)), key=lambda i: (dist(cands[i]), i))
        for n in scales:
            c.values[n] = cands[best][n]
            c.sources.setdefault(n, "llm")
        picked[c.index] = best + 1
    return picked


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _one_paragraph(text: str, limit: int = _RATIONALE_MAX_CHARS) -> str:
    """A rationale as stored: one paragraph, redacted before it is cut (no half key is left),
    at most ``limit`` characters, ending in the truncation mark when cut."""
    return clean_text(" ".join(str(text).split()), limit)


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


def _check_unit(name: str, value: Any, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r} is not a number: pass a float in [0, 1], {example}.")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1]: pass a probability, {example}.")


def _check_count(name: str, value: Any, low: int, example: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is not an integer >= {low}: pass {example}.")
