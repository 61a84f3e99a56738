"""The slot loop: while the budget lasts, fill free slots with asked trials; tell what returns.

The decisions (budget left, when to re-count it in storage, when to stop, the failure rate)
are :class:`Tally`'s, a plain value with no storage or threads, unit-tested on its own.
:class:`SlotLoop` does the effects: asks the study, launches jobs in slot threads through a
:class:`~._jobs.JobRunner`, writes one attribute per event, tells the study, beats the hearts
of running trials, and fails what is in flight when the driver stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.errors import FailureRateExceeded
from hpo.storage import redact_url

from ._outcome import Outcome, error_line, outcome
from ._plan import Budget, SweepPlan
from ._recovery import fail_and_retry, other_drivers_alive
from ._study import SamplerExhausted, tell

log = logging.getLogger(__name__)

Launch = Callable[[list[list[str]], int], list[JobReturn]]


# ------------------------------------------------------------------ decisions
def counts_in_budget(t: FrozenTrial) -> bool:
    """A finished trial counts in the budget unless it was re-run as another trial."""
    return t.state.is_finished() and not t.user_attrs.get(attrs.RETRIED, False)


def budget_used(trials: Iterable[FrozenTrial]) -> int:
    """Trials that use up the budget: those that count, plus the running ones."""
    return sum(1 for t in trials if counts_in_budget(t) or t.state == TrialState.RUNNING)


def stop_reason(sampler: Any, exhausted: bool) -> str | None:
    """Why no further trial should start, from the sampler's side; None: go on."""
    if exhausted:
        return f"{type(sampler).__name__} has covered its whole search space"
    if getattr(sampler, "stop_requested", False):
        reason = getattr(sampler, "stop_reason", None)
        return "the planner asked to stop" + (f": {reason}" if reason else "")
    return None


@dataclass
class Tally:
    """The loop's counts and what follows from them. No storage, no threads.

    Attributes:
        budget: The plan's budget.
        slots: Parallel slots.
        used: Trials of the study that use up the budget (see :func:`budget_used`).
        asked: Trials this run asked.
        finished: Trials of this run that ended (told, failed or lost).
        failed: Of those, the failed ones.
        shared: Another live driver works on the study: re-count before each ask.
    """

    budget: Budget
    slots: int
    used: int
    asked: int = 0
    finished: int = 0
    failed: int = 0
    shared: bool = False

    def remaining(self) -> int:
        """Trials still to start."""
        return self.budget.n_trials - self.used

    def free_slots(self, in_flight: int) -> int:
        """How many trials to ask now: free slots, within the budget."""
        return max(0, min(self.slots - in_flight, self.remaining()))

    def drivers_check_due(self) -> bool:
        """Look for other drivers on the study (every 10 asks, from the first)."""
        return self.asked % 10 == 0

    def recount_due(self) -> bool:
        """Re-count the budget in storage before the next ask: other drivers spend it too,
        and near the end of the budget a stale count would overshoot."""
        return self.shared or self.remaining() <= 2 * self.slots

    def asked_one(self) -> None:
        """A trial was asked: it uses the budget."""
        self.used += 1
        self.asked += 1

    def not_run(self) -> None:
        """An asked trial was not run (the planner stopped): it gives its budget back."""
        self.used -= 1

    def ended(self, *, failed: bool, retried: bool = False) -> None:
        """A trial of this run ended; a retried failure gives its place to the retry."""
        self.finished += 1
        if failed:
            self.failed += 1
        if retried:
            self.used -= 1

    def failure_rate_error(self, where: str) -> FailureRateExceeded | None:
        """The error that stops the sweep when too many trials of this run failed (judged
        once 3 have finished, or all of a smaller budget); None otherwise."""
        if self.finished < min(3, self.budget.n_trials) or self.failed == 0:
            return None
        rate = self.failed / self.finished
        if rate <= self.budget.max_failure_rate:
            return None
        return FailureRateExceeded(
            f"{self.failed} of {self.finished} trials failed (rate {rate:.2f} > "
            f"hydra.sweeper.max_failure_rate={self.budget.max_failure_rate}): stopping; see "
            f"the trials' '{attrs.ERROR}' attribute and their logs under {where}"
        )


# ------------------------------------------------------------------ the loop
@dataclass
class Slot:
    """A trial in flight: asked, launched, not yet told."""

    trial: optuna.Trial
    overrides: list[str]
    started: float = field(default_factory=time.monotonic)

    @property
    def trial_id(self) -> int:
        return self.trial._trial_id


class SlotLoop:
    """One run of the slot loop over an opened study (see the module docstring).

    Args:
        plan: The sweep's plan.
        study: The opened study (its sampler is ``sampler``).
        sampler: The study's sampler (asked for stop requests and ``prefetch``).
        launch: Runs a trial's jobs: ``launch(jobs, number) -> [JobReturn]`` (thread-safe).
        driver: This driver's id (``host:pid:start``).
        progress: Progress display (``trial_started``, ``trial_finished``, ``close``);
            default: :class:`hpo.progress.SweepProgress` as the plan says.
    """

    def __init__(
        self,
        plan: SweepPlan,
        study: optuna.Study,
        sampler: optuna.samplers.BaseSampler,
        launch: Launch,
        *,
        driver: str,
        progress: Any = None,
    ) -> None:
        self.plan = plan
        self.study = study
        self.sampler = sampler
        self.launch = launch
        self.driver = driver
        self.in_flight: dict[Future[list[JobReturn]], Slot] = {}
        self.tally = Tally(plan.budget, plan.slots, budget_used(study.get_trials(deepcopy=False)))
        self.exhausted = False
        self._beat_stop = threading.Event()
        self.progress = progress if progress is not None else _make_progress(plan, study)
        if plan.folds > 1:
            log.info("k-fold cross-validation: each trial runs as %d fold jobs", plan.folds)

    def stop_reason(self) -> str | None:
        """Why no further trial starts (sampler exhausted, planner stop); None: go on."""
        return stop_reason(self.sampler, self.exhausted)

    def run(self) -> optuna.Study:
        """Run trials until the budget is used or a stop; return the study."""
        plan, tally = self.plan, self.tally
        if tally.remaining() <= 0:
            log.info(
                "study %r already holds %d of n_trials=%d trials: nothing to run "
                "(raise hydra.sweeper.n_trials to extend it)",
                plan.study_name, tally.used, plan.budget.n_trials,
            )
            self._summary()
            return self.study
        log.info(
            "study %r: %d/%d trials done, running %d more in %d slot(s); storage %s",
            plan.study_name, tally.used, plan.budget.n_trials, tally.remaining(), plan.slots,
            redact_url(plan.storage_url or "memory"),
        )
        beat = threading.Thread(target=self._heartbeats, name="hpo-heartbeat", daemon=True)
        beat.start()
        pool = ThreadPoolExecutor(max_workers=plan.slots, thread_name_prefix="hpo-slot")
        try:
            while True:
                self._fill(pool)
                if not self.in_flight:
                    break
                done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    self._finish(fut, self.in_flight.pop(fut))
                error = tally.failure_rate_error(plan.sweep_dir)
                if error is not None:
                    raise error
        except BaseException as exc:
            self._abandon(exc)
            raise
        finally:
            self._beat_stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.progress.close()
        self._summary()
        return self.study

    # ---------------------------------------------------------------- slots
    def _fill(self, pool: ThreadPoolExecutor) -> None:
        tally = self.tally
        prefetch = getattr(self.sampler, "prefetch", None)
        if callable(prefetch) and self.stop_reason() is None:
            free = tally.free_slots(len(self.in_flight))
            if free > 0:  # the LLM call happens here, before any trial's clock starts
                prefetch(self.study, free)
        while tally.free_slots(len(self.in_flight)) > 0:
            if self.stop_reason():
                return
            if tally.drivers_check_due():
                tally.shared = other_drivers_alive(self.study.user_attrs, self.driver)
            if tally.recount_due():
                # the budget is the study's: with other drivers on it, re-count before each ask
                tally.used = budget_used(self.study.get_trials(deepcopy=False))
                if tally.remaining() <= 0:
                    return
            trial = self._ask()
            tally.asked_one()
            stop = self.stop_reason()
            if stop and trial.user_attrs.get(attrs.SOURCE) == "fallback":
                self._not_run(trial, stop)
                return
            self._start(pool, trial)

    def _not_run(self, trial: optuna.Trial, reason: str) -> None:
        # the planner said stop while proposing this one: it is not run and does not count
        storage = self.study._storage
        storage.set_trial_user_attr(trial._trial_id, attrs.ERROR, f"not run: {reason}")
        storage.set_trial_user_attr(trial._trial_id, attrs.RETRIED, True)
        with contextlib.suppress(SamplerExhausted):
            tell(self.study, trial, state=TrialState.FAIL)
        self.tally.not_run()

    def _start(self, pool: ThreadPoolExecutor, trial: optuna.Trial) -> None:
        overrides = self.plan.trial_overrides(trial.params)
        # one write at launch; the trial's datetime_start is its first heartbeat
        trial.set_user_attr(attrs.LAUNCH, attrs.launch_record(self.driver, overrides))
        jobs = self.plan.jobs(overrides, trial.number, trial._trial_id)
        self.in_flight[pool.submit(self.launch, jobs, trial.number)] = Slot(trial, overrides)
        log.debug("trial %d started: %s", trial.number, " ".join(overrides))
        self.progress.trial_started(trial.number, dict(trial.params))

    def _ask(self) -> optuna.Trial:
        conditions = self.plan.conditions
        if not conditions:
            return self.study.ask(self.plan.distributions)
        # define-by-run: a conditional parameter is suggested only when its condition holds
        trial = self.study.ask()
        suggest_active(self.plan.distributions, conditions,
                       lambda name, dist: _suggest(trial, name, dist))
        return trial

    def _heartbeats(self) -> None:
        interval = self.plan.heartbeat_interval_s
        if interval <= 0:
            return
        storage = self.study._storage
        while not self._beat_stop.wait(interval):
            for slot in list(self.in_flight.values()):
                with contextlib.suppress(Exception):
                    storage.set_trial_user_attr(slot.trial_id, attrs.HEARTBEAT, time.time())

    # ---------------------------------------------------------------- tells
    def _finish(self, fut: Future[list[JobReturn]], slot: Slot) -> None:
        frozen: FrozenTrial | None = None
        try:
            frozen = self._tell(fut, slot)
        finally:
            if frozen is None:  # failed before or during the tell: read what storage holds
                frozen = self.study._storage.get_trial(slot.trial_id)
            self.progress.trial_finished(frozen)

    def _tell(self, fut: Future[list[JobReturn]], slot: Slot) -> FrozenTrial | None:
        trial = slot.trial
        storage = self.study._storage
        try:
            rets = fut.result()
        except Exception as exc:  # the launcher could not run the job (killed, rejected, lost)
            rejected = _rejection(exc)
            if rejected is not None:  # the cluster refuses the job itself: stop, do not retry
                storage.set_trial_user_attr(slot.trial_id, attrs.ERROR, str(rejected))
                self._tell_study(trial, state=TrialState.FAIL)
                raise rejected from exc
            reason = f"job lost: {_lost_reason(exc) or error_line(exc)}"
            retried = fail_and_retry(self.study, storage.get_trial(slot.trial_id), reason,
                                     max_retries=self.plan.budget.max_retries)
            self.tally.ended(failed=True, retried=retried)
            return None
        result = outcome(rets, len(self.plan.directions))
        self._record(slot, result)
        self.tally.ended(failed=result.state == TrialState.FAIL)
        elapsed = time.monotonic() - slot.started
        frozen: FrozenTrial | None
        if result.state == TrialState.COMPLETE:
            frozen = self._tell_study(trial, list(result.values))
            log.info("trial %d finished in %.1f s: %s", trial.number, elapsed, ", ".join(
                f"{n}={v:.6g}" for n, v in zip(self.plan.objective_names, result.values,
                                                 strict=True)))
        elif result.state == TrialState.PRUNED:
            frozen = self._tell_study(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned after %.1f s: %s", trial.number, elapsed, result.error)
        else:
            frozen = self._tell_study(trial, state=TrialState.FAIL)
            log.warning("trial %d failed after %.1f s: %s", trial.number, elapsed, result.error)
        return frozen

    def _record(self, slot: Slot, result: Outcome) -> None:
        """The attributes of a returned trial, one write each, only what storage lacks."""
        storage = self.study._storage
        tid = slot.trial_id
        for key, value in record_attrs(self.plan, result).items():
            storage.set_trial_user_attr(tid, key, value)
        if result.output_dir and not self.plan.in_memory:  # while the trial still runs
            _upload_artifacts(self.study, tid, Path(result.output_dir), self.plan.storage_url)

    def _tell_study(self, trial: optuna.Trial, values: Any = None, *,
                    state: TrialState | None = None) -> FrozenTrial | None:
        try:
            return tell(self.study, trial, values, state=state)
        except SamplerExhausted:
            self.exhausted = True
            return None

    def _abandon(self, exc: BaseException) -> None:
        """The driver is stopping with trials in flight: fail them and queue their re-runs."""
        for fut, slot in list(self.in_flight.items()):
            fut.cancel()
            with contextlib.suppress(Exception):
                frozen = self.study._storage.get_trial(slot.trial_id)
                if frozen.state == TrialState.RUNNING:
                    fail_and_retry(self.study, frozen, f"driver stopped: {error_line(exc)}",
                                   max_retries=self.plan.budget.max_retries)
        self.in_flight.clear()

    def _summary(self) -> None:
        reason = self.stop_reason()
        if reason:
            log.warning("sweep stopped early: %s", reason)
        names = self.plan.objective_names
        try:
            if len(self.plan.directions) == 1:
                best = self.study.best_trial
                log.info("best trial %d: %s=%.6g with %s", best.number, names[0], best.value,
                         best.params)
            else:
                front = self.study.best_trials
                log.info("Pareto front: %d trial(s): %s", len(front), [t.number for t in front])
        except ValueError:
            log.info("no completed trial yet")
        log.info("%s", _source_summary(self.study))
        if not self.plan.in_memory:
            url = redact_url(self.plan.storage_url or "")
            log.info("inspect: python -m hpo.dashboard --storage %s   (report: python -m "
                     "hpo.report --storage %s --study %s --out report/)", url, url,
                     self.plan.study_name)


def record_attrs(plan: SweepPlan, result: Outcome) -> dict[str, Any]:
    """The user attrs to write for a returned trial (what the plan cannot derive)."""
    out: dict[str, Any] = {}
    if result.output_dir and plan.output_dir_pattern is None:
        out[attrs.OUTPUT_DIR] = result.output_dir
    if result.job_id and not plan.launcher.in_process:
        out[attrs.JOB_ID] = result.job_id
    if result.folds is not None:
        out[attrs.FOLDS] = result.folds
        out[attrs.FOLD_STD] = result.fold_std
    if result.state == TrialState.PRUNED:
        out[attrs.PRUNED] = result.error
    elif result.state == TrialState.FAIL:
        out[attrs.ERROR] = result.error
    return out


def suggest_active(
    distributions: Mapping[str, BaseDistribution],
    conditions: Mapping[str, tuple[str, frozenset[str]]],
    suggest: Callable[[str, BaseDistribution], Any],
) -> dict[str, Any]:
    """Suggest the active parameters of a trial, in order; return their values.

    A conditional parameter is suggested after the parameter it depends on, and only when that
    one is active and took one of its values (compared as strings). A cycle of conditions
    leaves its members out.
    """
    values: dict[str, Any] = {}
    pending = dict(distributions)
    while pending:
        progressed = False
        for name, dist in list(pending.items()):
            cond = conditions.get(name)
            if cond is not None:
                other, allowed = cond
                if other not in values and other in pending:
                    continue  # decide after the parameter it depends on
                if other not in values or str(values[other]) not in allowed:
                    del pending[name]  # its condition does not hold: inactive
                    progressed = True
                    continue
            values[name] = suggest(name, dist)
            del pending[name]
            progressed = True
        if not progressed:  # a cycle of conditions: nothing more can be decided
            break
    return values


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, dist.choices)


class _NoProgress:
    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        pass

    def trial_finished(self, frozen: FrozenTrial) -> None:
        log.info("trial %d %s: %s", frozen.number, frozen.state.name.lower(),
                 frozen.values if frozen.values else frozen.user_attrs.get(attrs.ERROR, ""))

    def close(self) -> None:
        pass


def _make_progress(plan: SweepPlan, study: optuna.Study) -> Any:
    try:
        from hpo.progress import SweepProgress
    except ImportError:
        return _NoProgress()
    return SweepProgress(study=study, n_trials=plan.budget.n_trials, n_jobs=plan.slots,
                         objective_names=list(plan.objective_names), enabled=plan.progress)


def _source_summary(study: optuna.Study) -> str:
    """Where the trials came from: the end of every sweep says how many the LLM proposed."""
    from hpo.samplers import llm_share_summary

    return llm_share_summary(study)


def _upload_artifacts(study: optuna.Study, trial_id: int, out: Path, url: str | None) -> None:
    try:
        from hpo.artifacts import upload_trial_artifacts
    except ImportError:
        return
    try:
        upload_trial_artifacts(study, trial_id, out, url)
    except Exception as exc:  # artifacts are copies: never fail a trial over them
        log.warning("could not upload the artifacts of %s: %s", out, error_line(exc))


def _lost_reason(exc: BaseException) -> str | None:
    from ._slurm import lost_job_reason

    return lost_job_reason(exc)


def _rejection(exc: BaseException) -> Exception | None:
    """A ConfigError when the cluster rejected the job's resources; None otherwise."""
    from ._slurm import rejection_error

    return rejection_error(exc)
