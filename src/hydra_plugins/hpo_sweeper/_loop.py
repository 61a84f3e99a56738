"""The slot loop: while the budget lasts, fill free slots with asked trials; tell what returns.

The decisions (budget left, when to re-count it in storage, when to stop, the failure rate)
are :class:`Tally`'s, a plain value with no storage or threads, unit-tested on its own.
:class:`SlotLoop` does the effects: asks the study, starts jobs through a
:class:`~._jobs.JobRunner` (submitted from the main thread, waited for in slot threads),
writes one attribute per event, tells the study, beats the hearts of running trials, adopts
the re-attached jobs of earlier drivers, and, when the driver stops, keeps, cancels or fails
what is in flight (:mod:`._interrupt` for signals).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from hpo.errors import DataUnavailableError, FailureRateExceeded, HPOError
from hpo.storage import redact_url

from ._interrupt import Guard, Interrupted, signal_name
from ._jobs import FunctionRunner, Handle, JobRunner, TrialJobs
from ._lost_storage import StorageLost, lost_storage, save_unreported, with_retries
from ._outcome import Outcome, error_line, failed_launch, outcome
from ._plan import Budget, ResourceClass, SweepPlan
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
    """A trial in flight: launched (or re-attached), not yet told.

    Attributes:
        number: The trial's number.
        trial_id: Its storage id.
        params: Its params.
        overrides: The Hydra overrides of its job.
        handle: Its job(s): ``wait`` runs in the slot thread; ``job`` when submitted.
        resources: The resource class of its job, if any.
        started: When the slot took it (monotonic).
        result: Its outcome once its jobs returned (kept if it cannot be told).
    """

    number: int
    trial_id: int
    params: dict[str, Any]
    overrides: list[str]
    handle: Handle
    resources: ResourceClass | None = None
    started: float = field(default_factory=time.monotonic)
    result: Outcome | None = None


class SlotLoop:
    """One run of the slot loop over an opened study (see the module docstring).

    Args:
        plan: The sweep's plan.
        study: The opened study (its sampler is ``sampler``).
        sampler: The study's sampler (asked for stop requests and ``prefetch``).
        runner: Starts trials' jobs (:class:`._jobs.JobRunner`), or a plain
            ``launch(jobs, number) -> [JobReturn]`` function run in the slot threads.
        driver: This driver's id (``host:pid:start``).
        progress: Progress display (``trial_started``, ``trial_finished``, ``close``);
            default: :class:`hpo.progress.SweepProgress` as the plan says.
        adopt: RUNNING trials of earlier drivers whose jobs this run waits for (re-attached:
            they ended with a result, or still run); they take slots first.
        guard: The signal guard of the sweep; default: one of the loop's own.
        app: How the sweep's app was started (:func:`hpo.best.app_of`): when given, the
            sweep's end (also an early stop or an interruption) writes
            ``<sweep dir>/optimization_results.yaml`` (:func:`hpo.best.write_results`).
    """

    def __init__(
        self,
        plan: SweepPlan,
        study: optuna.Study,
        sampler: optuna.samplers.BaseSampler,
        runner: JobRunner | FunctionRunner | Launch,
        *,
        driver: str,
        progress: Any = None,
        adopt: Sequence[FrozenTrial] = (),
        guard: Guard | None = None,
        app: Any = None,
    ) -> None:
        self.plan = plan
        self.study = study
        self.sampler = sampler
        self.runner: Any = runner if hasattr(runner, "submit") else FunctionRunner(runner)
        self.driver = driver
        self.adopt = list(adopt)
        self.guard = guard
        self.in_flight: dict[Future[list[JobReturn]], Slot] = {}
        self.pending: list[optuna.Trial] = []  # asked, not started yet
        self.tally = Tally(plan.budget, plan.slots, budget_used(study.get_trials(deepcopy=False)))
        self.exhausted = False
        self.interrupted_in_flight = 0
        self.app = app
        self.results_path: Path | None = None
        self.storage_lost = False
        self._beat_stop = threading.Event()
        self.progress = progress if progress is not None else _make_progress(plan, study)
        if plan.folds > 1:
            log.info("k-fold cross-validation: each trial runs as %d fold jobs", plan.folds)

    def stop_reason(self) -> str | None:
        """Why no further trial starts (sampler exhausted, planner stop); None: go on."""
        return stop_reason(self.sampler, self.exhausted)

    def run(self) -> optuna.Study:
        """Run trials until the budget is used or a stop; return the study.

        Raises:
            Interrupted: SIGINT/SIGTERM/SIGHUP (see :meth:`_interrupted` for what happened
                to the trials in flight).
        """
        if self.guard is not None:
            return self._run(self.guard)
        with Guard() as guard:
            self.guard = guard
            return self._run(guard)

    def _run(self, guard: Guard) -> optuna.Study:
        plan, tally = self.plan, self.tally
        if tally.remaining() <= 0 and not self.adopt:
            log.info(
                "study %r already holds %d of n_trials=%d trials: nothing to run "
                "(raise hydra.sweeper.n_trials to extend it)",
                plan.study_name, tally.used, plan.budget.n_trials,
            )
            self._summary()
            return self.study
        adopted = f"{len(self.adopt)} re-attached, " if self.adopt else ""
        log.info(
            "study %r: %d/%d trials done, %srunning %d more in %d slot(s); storage %s",
            plan.study_name, tally.used - len(self.adopt), plan.budget.n_trials, adopted,
            tally.remaining(), plan.slots, redact_url(plan.storage_url or "memory"),
        )
        beat = threading.Thread(target=self._heartbeats, name="hpo-heartbeat", daemon=True)
        beat.start()
        # slot threads for the re-attached trials too: they may exceed n_jobs
        pool = ThreadPoolExecutor(max_workers=plan.slots + len(self.adopt),
                                  thread_name_prefix="hpo-slot")
        try:
            for frozen in self.adopt:
                self._adopt(pool, frozen)
            while True:
                self._fill(pool)
                if not self.in_flight:
                    break
                done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    with guard.critical():  # a result is told whole, or not at all
                        self._finish(fut, self.in_flight.pop(fut))
                self._check_failure_rate()
        except Interrupted as exc:
            self._interrupted(exc)
            raise
        except BaseException as exc:
            self._abandon(exc)
            lost = (lost_storage(plan.storage_url, exc)
                    if isinstance(exc, Exception) and not isinstance(exc, HPOError) else None)
            if lost is not None:  # the real cause, not what the failed write says
                self.storage_lost = True
                raise lost from None
            raise
        finally:
            self._beat_stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.progress.close()
            self._write_results()
        self._summary()
        return self.study

    def _write_results(self) -> None:
        """``optimization_results.yaml`` for this sweep (see ``app``); a failure to write it
        is logged, never raised: the sweep's own outcome comes first."""
        if self.app is None or self.storage_lost:
            return
        from hpo.best import write_results

        try:
            self.results_path = write_results(self.study, self.plan.sweep_dir, app=self.app,
                                              storage_url=self.plan.storage_url)
        except Exception as exc:  # a full disk, a read-only sweep dir
            log.warning("could not write the results file in %s: %s", self.plan.sweep_dir,
                        error_line(exc))

    def _check_failure_rate(self) -> None:
        error = self.tally.failure_rate_error(self.plan.sweep_dir)
        if error is not None:
            raise error

    # ---------------------------------------------------------------- slots
    def _fill(self, pool: ThreadPoolExecutor) -> None:
        tally = self.tally
        prefetch = getattr(self.sampler, "prefetch", None)
        if callable(prefetch) and self.stop_reason() is None:
            free = tally.free_slots(len(self.in_flight))
            if free > 0:  # the LLM call happens here, before any trial's clock starts
                prefetch(self.study, free)
        while tally.free_slots(len(self.in_flight) + len(self.pending)) > 0:
            if self.stop_reason():
                break
            if tally.drivers_check_due():
                tally.shared = other_drivers_alive(self.study.user_attrs, self.driver)
            if tally.recount_due():
                # the budget is the study's: with other drivers on it, re-count before each ask
                tally.used = budget_used(self.study.get_trials(deepcopy=False))
                if tally.remaining() <= 0:
                    break
            trial = self._ask()
            self.pending.append(trial)
            tally.asked_one()
            stop = self.stop_reason()
            if stop and trial.user_attrs.get(attrs.SOURCE) == "fallback":
                self.pending.remove(trial)
                self._not_run(trial, stop)
                break
            if not self.plan.array:  # one trial at a time; an array takes the ready ones
                self._start(pool, [trial])
        if self.pending:
            self._start(pool, list(self.pending))

    def _not_run(self, trial: optuna.Trial, reason: str) -> None:
        # the planner said stop while proposing this one: it is not run and does not count
        storage = self.study._storage
        storage.set_trial_user_attr(trial._trial_id, attrs.ERROR, f"not run: {reason}")
        storage.set_trial_user_attr(trial._trial_id, attrs.RETRIED, True)
        with contextlib.suppress(SamplerExhausted):
            tell(self.study, trial, state=TrialState.FAIL)
        self.tally.not_run()

    def _start(self, pool: ThreadPoolExecutor, trials: list[optuna.Trial]) -> None:
        """Submit the trials' jobs, record each trial's launch (one write, with its job ids
        on submitit launchers) and give each a slot."""
        plan = self.plan
        slots = []
        for t in trials:
            overrides = plan.trial_overrides(t.params)
            slots.append(Slot(t.number, t._trial_id, dict(t.params), overrides,
                              Handle(wait=list), plan.resource_class(t.params)))
        runs = [TrialJobs(s.number, plan.jobs(s.overrides, s.number, s.trial_id), s.resources)
                for s in slots]
        assert self.guard is not None
        with self.guard.critical():  # a job never runs without its record
            try:
                handles = self.runner.submit(runs)
            except Exception as exc:
                for t in trials:
                    self.pending.remove(t)
                self._submit_failed(slots, exc)
                return
            for t, slot, handle in zip(trials, slots, handles, strict=True):
                slot.handle = handle
                self.study._storage.set_trial_user_attr(slot.trial_id, attrs.LAUNCH,
                                                        attrs.launch_record(
                    self.driver, slot.overrides, job=handle.job,
                    resources=slot.resources.name if slot.resources else None))
                self.in_flight[pool.submit(handle.wait)] = slot
                self.pending.remove(t)
                log.debug("trial %d started: %s", slot.number, " ".join(slot.overrides))
                self.progress.trial_started(slot.number, slot.params)

    def _submit_failed(self, slots: list[Slot], exc: Exception) -> None:
        """sbatch refused the jobs (stop the sweep) or could not be run (lost: retry)."""
        rejected = _rejection(exc, slots[0].resources)
        storage = self.study._storage
        if rejected is not None:  # the cluster refuses the job itself: stop, do not retry
            for slot in slots:
                storage.set_trial_user_attr(slot.trial_id, attrs.ERROR, str(rejected))
                self._tell_study(slot.number, state=TrialState.FAIL)
            raise rejected from exc
        reason = f"job lost: {_lost_reason(exc) or error_line(exc)}"
        for slot in slots:
            retried = fail_and_retry(self.study, storage.get_trial(slot.trial_id), reason,
                                     max_retries=self.plan.budget.max_retries)
            self.tally.ended(failed=True, retried=retried)
            self.progress.trial_finished(storage.get_trial(slot.trial_id))
        self._check_failure_rate()

    def _adopt(self, pool: ThreadPoolExecutor, frozen: FrozenTrial) -> None:
        """Wait in a slot for the job(s) of an earlier driver's trial (re-attached)."""
        rec = attrs.launch_job(frozen.user_attrs)
        assert rec is not None and self.guard is not None
        handle = self.runner.attach(rec)
        slot = Slot(frozen.number, frozen._trial_id, dict(frozen.params),
                    attrs.launch_overrides(frozen.user_attrs) or [], handle)
        with self.guard.critical():
            record = attrs.relaunched(frozen.user_attrs, self.driver)  # now this driver's
            self.study._storage.set_trial_user_attr(slot.trial_id, attrs.LAUNCH, record)
            self.in_flight[pool.submit(handle.wait)] = slot
        self.progress.trial_started(slot.number, slot.params)

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
            # SQLite may go on writing into a database whose folder was deleted: look
            lost = lost_storage(self.plan.storage_url)
            if lost is not None:
                raise lost
        except Exception as exc:
            lost = exc if isinstance(exc, StorageLost) else lost_storage(
                self.plan.storage_url, exc)
            if lost is None:
                raise
            self.storage_lost = True
            self._keep_unreported(slot)
            raise lost from None
        finally:
            if not self.storage_lost:
                if frozen is None:  # failed before or during the tell: read what storage holds
                    frozen = self.study._storage.get_trial(slot.trial_id)
                self.progress.trial_finished(frozen)

    def _keep_unreported(self, slot: Slot) -> None:
        """A result the lost storage could not take: kept beside the trial
        (``hpo_unreported.json``), told when the next run opens the storage again."""
        result = slot.result
        if result is None:
            return
        where = (self.plan.output_dir(slot.number) or result.output_dir
                 or str(Path(self.plan.sweep_dir) / f"trial_{slot.number}"))
        record = {"study": self.study.study_name, "number": slot.number,
                  "trial_id": slot.trial_id, "state": result.state.name,
                  "values": list(result.values), "user_attrs": record_attrs(self.plan, result)}
        if save_unreported(Path(where), record) is not None:
            log.info("trial %d: its result is kept in %s until the storage is back", slot.number,
                     Path(where) / "hpo_unreported.json")

    def _tell(self, fut: Future[list[JobReturn]], slot: Slot) -> FrozenTrial | None:
        storage = self.study._storage
        try:
            rets = fut.result()
        except Exception as exc:  # the job could not be run, was lost, or failed outside the task
            rejected = _rejection(exc, slot.resources)
            if rejected is not None:  # the cluster refuses the job itself: stop, do not retry
                storage.set_trial_user_attr(slot.trial_id, attrs.ERROR, str(rejected))
                self._tell_study(slot.number, state=TrialState.FAIL)
                raise rejected from exc
            failed = failed_launch(exc)
            if failed is not None:  # deterministic (a config error): a FAIL, never retried
                result = failed
            else:
                reason = f"job lost: {_lost_reason(exc) or error_line(exc)}"
                retried = fail_and_retry(self.study, storage.get_trial(slot.trial_id), reason,
                                         max_retries=self.plan.budget.max_retries)
                self.tally.ended(failed=True, retried=retried)
                return None
        else:
            result = outcome(rets, len(self.plan.directions))
        slot.result = result
        self._record(slot, result)
        self.tally.ended(failed=result.state == TrialState.FAIL)
        elapsed = time.monotonic() - slot.started
        frozen: FrozenTrial | None
        if result.state == TrialState.COMPLETE:
            frozen = self._tell_study(slot.number, list(result.values))
            log.info("trial %d finished in %.1f s: %s", slot.number, elapsed, ", ".join(
                f"{n}={v:.6g}" for n, v in zip(self.plan.objective_names, result.values,
                                                 strict=True)))
        elif result.state == TrialState.PRUNED:
            frozen = self._tell_study(slot.number, state=TrialState.PRUNED)
            log.info("trial %d pruned after %.1f s: %s", slot.number, elapsed, result.error)
        else:
            frozen = self._tell_study(slot.number, state=TrialState.FAIL)
            log.warning("trial %d failed after %.1f s: %s", slot.number, elapsed, result.error)
            self._stop_without_data(slot.number, result.error)
        return frozen

    def _stop_without_data(self, number: int, error: str) -> None:
        """A trial failed because its data cannot be had here (``DataUnavailableError``)
        before any trial completed: no other params can fix that, so stop with the job's
        line, which names the fix, instead of failing every trial."""
        reason = data_unavailable(error)
        if reason is None or self.study.get_trials(deepcopy=False,
                                                   states=(TrialState.COMPLETE,)):
            return
        raise DataUnavailableError(f"{reason} (trial {number} failed on it; no other "
                                   "params can fix that: stopping)")

    def _record(self, slot: Slot, result: Outcome) -> None:
        """The attributes of a returned trial, one write each, only what storage lacks."""
        storage = self.study._storage
        tid = slot.trial_id
        for key, value in record_attrs(self.plan, result).items():
            with_retries(functools.partial(storage.set_trial_user_attr, tid, key, value))
        if result.fold_dirs:
            self._record_folds(tid, result.fold_dirs)
        elif result.output_dir and not self.plan.in_memory:  # while the trial still runs
            _upload_artifacts(self.study, tid, Path(result.output_dir), self.plan.storage_url)

    def _record_folds(self, tid: int, fold_dirs: Sequence[str]) -> None:
        """k-fold CV: the trial's per-class scores become their mean and std across the
        folds (each fold's stay under ``per_class_fold_<i>``, its curves under
        ``curves_fold_<i>``); each fold's artifacts are uploaded as ``fold_<i>_<file>``."""
        from hpo.trial_context import fold_key, per_class_across_folds

        storage = self.study._storage
        user = storage.get_trial(tid).user_attrs
        per_fold = [user[k] for i in range(len(fold_dirs))
                    if isinstance(user.get(k := fold_key(attrs.PER_CLASS, i)), Mapping)]
        if per_fold:
            summary = per_class_across_folds(per_fold)
            storage.set_trial_user_attr(tid, attrs.PER_CLASS, summary["mean"])
            storage.set_trial_user_attr(tid, attrs.PER_CLASS_STD, summary["std"])
        if self.plan.in_memory:
            return
        for i, out in enumerate(fold_dirs):
            if out:
                _upload_fold_artifacts(self.study, tid, Path(out), i, self.plan.storage_url)

    def _tell_study(self, number: int, values: Any = None, *,
                    state: TrialState | None = None) -> FrozenTrial | None:
        try:
            return with_retries(lambda: tell(self.study, number, values, state=state))
        except SamplerExhausted:
            self.exhausted = True
            return None

    # ---------------------------------------------------------------- the driver stops
    def _interrupted(self, exc: Interrupted) -> None:
        """A stop signal: jobs that can run on without the driver are kept (on_interrupt=keep)
        and re-attached by the next run, or cancelled; the trials that do not run on (the
        in-process ones, cancelled jobs, trials asked but not started) are failed and queued
        again without using a retry. Nothing is logged: the driver prints one line."""
        keep = self.plan.on_interrupt == "keep" or exc.requeue
        why = f"interrupted ({signal_name(exc.signum)})"
        self.interrupted_in_flight = len(self.in_flight)
        for fut, slot in list(self.in_flight.items()):
            if slot.handle.job is not None and keep:
                continue  # runs on; the next driver re-attaches to it
            fut.cancel()
            if slot.handle.cancel is not None:
                slot.handle.cancel()
            self._fail_for_rerun(slot.trial_id, f"{why}: its job was cancelled"
                                 if slot.handle.job is not None else why)
        for trial in self.pending:
            self._fail_for_rerun(trial._trial_id, f"{why} before its job started")
        self.in_flight.clear()
        self.pending.clear()

    def _fail_for_rerun(self, trial_id: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            frozen = self.study._storage.get_trial(trial_id)
            if frozen.state == TrialState.RUNNING:
                fail_and_retry(self.study, frozen, reason, uses_retry=False,
                               max_retries=self.plan.budget.max_retries)

    def _abandon(self, exc: BaseException) -> None:
        """The driver is stopping on an error with trials in flight: cancel their jobs, fail
        them and queue their re-runs."""
        for fut, slot in list(self.in_flight.items()):
            fut.cancel()
            if slot.handle.cancel is not None:
                slot.handle.cancel()
            with contextlib.suppress(Exception):
                frozen = self.study._storage.get_trial(slot.trial_id)
                if frozen.state == TrialState.RUNNING:
                    fail_and_retry(self.study, frozen, f"driver stopped: {error_line(exc)}",
                                   max_retries=self.plan.budget.max_retries)
        for trial in self.pending:
            self._fail_for_rerun(trial._trial_id, f"driver stopped: {error_line(exc)}")
        self.in_flight.clear()
        self.pending.clear()

    def finished(self) -> int:
        """Trials of the study that count as finished (read from storage)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if counts_in_budget(t))

    def _summary(self) -> None:
        """The sweep's last lines: the best trial(s), where the trials came from, the results
        file, and the commands that show the study."""
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
        for line in summary_commands(self.plan, self.results_path):
            log.info("%s", line)


def summary_commands(plan: SweepPlan, results: Path | None) -> list[str]:
    """The end-of-sweep lines that say where the results are and how to look at the study
    (``python -m hpo.dashboard``, which shows the artifacts; plain optuna-dashboard does
    not). A study in memory is gone with the process: no command for it."""
    lines = []
    if results is not None:
        lines.append(f"results:   {results}")
    if not plan.in_memory:
        url = shlex.quote(redact_url(plan.storage_url or ""))
        study = shlex.quote(plan.study_name)
        lines += [
            f"report:    python -m hpo.report --storage {url} --study {study} --out report/",
            f"dashboard: python -m hpo.dashboard --storage {url}",
        ]
    return lines


def record_attrs(plan: SweepPlan, result: Outcome) -> dict[str, Any]:
    """The user attrs to write for a returned trial (what the plan cannot derive)."""
    out: dict[str, Any] = {}
    if result.output_dir and plan.output_dir_pattern is None:
        out[attrs.OUTPUT_DIR] = result.output_dir
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


def data_unavailable(error: str) -> str | None:
    """The message of a ``DataUnavailableError`` in a trial's error line (in-process:
    ``DataUnavailableError: ...``; submitit: ``hpo.errors.DataUnavailableError: ...``)."""
    m = re.search(r"\bDataUnavailableError: (.+)$", error)
    return m.group(1).strip() if m else None


def _upload_fold_artifacts(study: optuna.Study, trial_id: int, out: Path, fold: int,
                           url: str | None) -> None:
    """Fold ``fold``'s artifacts, renamed ``fold_<i>_<file>`` (every fold writes the same
    file names, and a trial holds one artifact per name)."""
    import shutil
    import tempfile

    try:
        from hpo.artifacts import TRIAL_ARTIFACT_FILES, upload_trial_artifacts
    except ImportError:
        return
    present = [n for n in TRIAL_ARTIFACT_FILES if (out / n).is_file()]
    if not present:
        return
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-fold-") as tmp:
            names = []
            for name in present:
                shutil.copyfile(out / name, Path(tmp) / f"fold_{fold}_{name}")
                names.append(f"fold_{fold}_{name}")
            upload_trial_artifacts(study, trial_id, Path(tmp), url, files=names)
    except Exception as exc:  # artifacts are copies: never fail a trial over them
        log.warning("could not upload the artifacts of %s: %s", out, error_line(exc))


def _lost_reason(exc: BaseException) -> str | None:
    from ._slurm import lost_job_reason

    return lost_job_reason(exc)


def _rejection(exc: BaseException, resources: ResourceClass | None) -> Exception | None:
    """A ConfigError when the cluster rejected the job's resources (naming the trial's
    resource class); None otherwise."""
    from ._slurm import rejection_error

    if resources is None:
        return rejection_error(exc)
    return rejection_error(exc, resource_class=resources.name, class_keys=resources.settings)
