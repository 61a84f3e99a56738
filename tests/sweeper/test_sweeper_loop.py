"""The slot loop's decisions, and the loop itself on a real in-memory study.

No process starts: trials "run" in the slot threads through a ``launch`` function that
evaluates a quadratic and returns Hydra ``JobReturn``s, as the launcher would.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo import attrs
from hpo.errors import FailureRateExceeded
from hydra_plugins.hpo_sweeper._interrupt import Interrupted
from hydra_plugins.hpo_sweeper._loop import (
    SlotLoop,
    Tally,
    budget_used,
    stop_reason,
    suggest_active,
    summary_commands,
)
from hydra_plugins.hpo_sweeper._outcome import outcome
from hydra_plugins.hpo_sweeper._plan import (
    Budget,
    LauncherFacts,
    SweepPlan,
    build_plan,
)
from hydra_plugins.hpo_sweeper._recovery import (
    ATTACH,
    FAIL,
    LEAVE,
    TELL,
    JobFacts,
    fail_and_retry,
    judge,
    recover_orphans,
)
from hydra_plugins.hpo_sweeper._study import build_pruner, build_sampler, open_study
from hydra_plugins.hpo_sweeper.config import HPOSweeperConf

optuna.logging.set_verbosity(optuna.logging.WARNING)
DRIVER = "testhost:1:1"


# ------------------------------------------------------------------ Tally: pure decisions
def test_tally_counts_the_budget_and_free_slots() -> None:
    tally = Tally(Budget(n_trials=5, max_failure_rate=0.5, max_retries=1), slots=3, used=1)
    assert tally.remaining() == 4 and tally.free_slots(in_flight=0) == 3
    assert tally.free_slots(in_flight=2) == 1
    for _ in range(3):
        tally.asked_one()
    assert tally.remaining() == 1 and tally.free_slots(in_flight=1) == 1
    tally.asked_one()
    assert tally.free_slots(in_flight=0) == 0
    tally.ended(failed=True, retried=True)  # the retry takes the failed trial's place
    assert tally.remaining() == 1 and tally.failed == 1 and tally.finished == 1
    tally.not_run()
    assert tally.remaining() == 2


def test_tally_recounts_only_when_shared_or_near_the_end() -> None:
    tally = Tally(Budget(100, 0.5, 1), slots=4, used=0)
    assert tally.drivers_check_due()  # before the first ask
    tally.asked_one()
    assert not tally.drivers_check_due() and not tally.recount_due()
    tally.shared = True
    assert tally.recount_due()
    tally.shared, tally.used = False, 92
    assert tally.recount_due()  # 8 left: a stale count could overshoot


@pytest.mark.parametrize(
    ("n_trials", "finished", "failed", "rate", "stops"),
    [(10, 2, 2, 0.5, False),  # judged from 3 finished trials on
     (10, 3, 2, 0.5, True), (10, 4, 2, 0.5, False), (10, 3, 0, 0.0, False),
     (2, 2, 2, 0.9, True),  # a budget under 3: judged at its end
     (10, 5, 5, 1.0, False)],
)
def test_failure_rate(n_trials: int, finished: int, failed: int, rate: float,
                      stops: bool) -> None:
    tally = Tally(Budget(n_trials, rate, 1), slots=1, used=finished, finished=finished,
                  failed=failed)
    error = tally.failure_rate_error("outputs/sweep")
    assert (error is not None) == stops
    if error is not None:
        assert f"{failed} of {finished} trials failed" in str(error)
        assert f"max_failure_rate={rate}" in str(error) and "outputs/sweep" in str(error)


def test_budget_counts_finished_and_running_but_not_retried_failures() -> None:
    dist = {"x": FloatDistribution(0, 1)}
    trials = [
        create_trial(value=1.0, params={"x": 0.1}, distributions=dist),
        create_trial(state=TrialState.FAIL, params={"x": 0.2}, distributions=dist),
        create_trial(state=TrialState.FAIL, params={"x": 0.3}, distributions=dist,
                     user_attrs={attrs.RETRIED: True}),
        create_trial(state=TrialState.PRUNED, params={"x": 0.4}, distributions=dist),
        create_trial(state=TrialState.RUNNING, params={"x": 0.5}, distributions=dist),
        create_trial(state=TrialState.WAITING, params={"x": 0.6}, distributions=dist),
    ]
    assert budget_used(trials) == 4


class StoppingSampler(optuna.samplers.RandomSampler):
    """A random sampler whose planner asks to stop after ``after`` trials were asked."""

    def __init__(self, after: int) -> None:
        super().__init__(seed=0)
        self.after = after
        self.asked = 0
        self.prefetched: list[int] = []

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.asked += 1
        if self.asked > self.after:  # the stop arrives with a trial from the fallback
            study._storage.set_trial_user_attr(trial._trial_id, attrs.SOURCE, "fallback")
            trial.user_attrs[attrs.SOURCE] = "fallback"  # the live trial's cache, as LLMSampler

    @property
    def stop_requested(self) -> bool:
        return self.asked > self.after

    @property
    def stop_reason(self) -> str:
        return "enough"

    def prefetch(self, study: optuna.Study, n: int) -> None:
        self.prefetched.append(n)


def test_stop_reasons() -> None:
    assert stop_reason(optuna.samplers.TPESampler(), exhausted=False) is None
    assert "TPESampler has covered its whole search space" in str(
        stop_reason(optuna.samplers.TPESampler(), exhausted=True))
    sampler = StoppingSampler(after=0)
    assert stop_reason(sampler, exhausted=False) is None
    sampler.asked = 1
    assert stop_reason(sampler, exhausted=False) == "the planner asked to stop: enough"


def test_suggest_active_follows_conditions_in_order() -> None:
    dists = {"net.width": FloatDistribution(1, 2),  # listed before the param it depends on
             "model": CategoricalDistribution(["mlp", "cnn"]),
             "net.depth": FloatDistribution(1, 2),
             "a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}
    conditions = {"net.width": ("model", frozenset({"mlp"})),
                  "net.depth": ("net.width", frozenset({"1.0"})),  # depends on a conditional
                  "a": ("b", frozenset({"x"})), "b": ("a", frozenset({"x"}))}  # a cycle
    picked = {"model": "mlp", "net.width": 1.0, "net.depth": 2.0}
    order: list[str] = []

    def suggest(name: str, _: Any) -> Any:
        order.append(name)
        return picked[name]

    assert suggest_active(dists, conditions, suggest) == picked
    assert order == ["model", "net.width", "net.depth"]
    picked["model"] = "cnn"
    order.clear()
    assert suggest_active(dists, conditions, suggest) == {"model": "cnn"}


# ------------------------------------------------------------------ outcomes (pure)
def job(value: Any = 1.0, status: JobStatus = JobStatus.COMPLETED,
        hydra: dict[str, Any] | None = None) -> JobReturn:
    return JobReturn(overrides=[], cfg=None,
                     hydra_cfg=OmegaConf.create(hydra) if hydra else None, working_dir=None,
                     task_name="t", status=status, _return_value=value)


def test_outcomes_of_job_returns() -> None:
    done = outcome([job(2.5, hydra={"hydra": {"runtime": {"output_dir": "/o/3"},
                                              "job": {"id": "77"}}})], 1)
    assert (done.state, done.values, done.output_dir, done.job_id) == (
        TrialState.COMPLETE, (2.5,), "/o/3", "77")
    assert outcome([job([1, 2])], 2).values == (1.0, 2.0)
    assert "expected 1 number(s)" in outcome([job([1, 2])], 1).error
    assert outcome([job(float("nan"))], 1).error == "objective is nan (not finite)"
    assert outcome([job("x")], 1).error == "the task returned 'x', not a number"
    failed = outcome([job(RuntimeError("boom\nmore"), JobStatus.FAILED)], 1)
    assert (failed.state, failed.error) == (TrialState.FAIL, "RuntimeError: boom")
    pruned = outcome([job(optuna.TrialPruned("pruned at epoch 2"), JobStatus.FAILED)], 1)
    assert (pruned.state, pruned.error) == (TrialState.PRUNED, "pruned at epoch 2")
    folds = outcome([job(1.0), job(2.0), job(3.0)], 1)
    assert folds.values == (2.0,) and folds.folds == [1.0, 2.0, 3.0] and folds.fold_std == 1.0
    two = outcome([job([1.0, 4.0]), job([3.0, 4.0])], 2)
    assert two.values == (2.0, 4.0) and two.folds == [[1.0, 4.0], [3.0, 4.0]]
    assert outcome([job(1.0), job(ValueError("x"), JobStatus.FAILED)], 1).state == (
        TrialState.FAIL)


# ------------------------------------------------------------------ recovery decisions
START = datetime(2000, 1, 1)
NOW = START.timestamp() + 1000  # the trials started long ago: their heartbeats decide
FRESH = NOW - 60.0


def running(**user_attrs: Any) -> FrozenTrial:
    t = create_trial(state=TrialState.RUNNING, params={}, distributions={},
                     user_attrs=user_attrs)
    t.datetime_start = START
    return t


@pytest.mark.parametrize(
    ("user_attrs", "alive", "others", "orphan", "why"),
    [
        ({attrs.LAUNCH: {"driver": "h:1:1", "overrides": []}}, False, True, True, "is gone"),
        ({attrs.LAUNCH: {"driver": "h:1:1", "overrides": []}}, True, True, False, ""),
        ({attrs.DRIVER: "h:1:1"}, False, True, True, "is gone"),  # written by older versions
        ({attrs.LAUNCH: {"driver": "far:1:1", "overrides": []}}, None, True, True,
         "no heartbeat"),
        ({attrs.LAUNCH: {"driver": "far:1:1", "overrides": []},
          attrs.HEARTBEAT: FRESH}, None, True, False, ""),
        ({}, None, False, True, "driver of this study is gone"),  # asked, never launched
        ({attrs.HEARTBEAT: FRESH}, None, True, False, ""),
    ],
)
def test_judging_running_trials(user_attrs: dict[str, Any], alive: bool | None, others: bool,
                                orphan: bool, why: str) -> None:
    verdict = judge(running(**user_attrs), now=NOW, grace_s=120,
                    others_maybe_alive=others, alive=lambda _: alive)
    assert verdict.orphan == orphan and why in verdict.reason


SUBMITTED = {attrs.LAUNCH: {"driver": "h:1:1", "overrides": ["x=1"], "job": {
    "executor": "slurm", "folder": "/tmp/s/%j", "ids": ["10", "11"]}}}


@pytest.mark.parametrize(
    ("job", "action", "why"),
    [
        (JobFacts(True, ("COMPLETED", "COMPLETED")), TELL, "ended with a result"),
        # a result on disk wins over what the scheduler still says (sacct lags)
        (JobFacts(True, ("RUNNING", "COMPLETING")), TELL, "ended with a result"),
        (JobFacts(False, ("COMPLETED", "RUNNING")), ATTACH, "is RUNNING"),
        (JobFacts(False, ("PENDING", "PENDING")), ATTACH, "is PENDING"),
        (JobFacts(False, ("REQUEUED", "")), ATTACH, "is REQUEUED"),
        (JobFacts(False, (), known=False), ATTACH, "cannot be looked up"),
        (JobFacts(False, ("CANCELLED by 0", "COMPLETED")), FAIL, "ended CANCELLED by 0"),
        (JobFacts(False, ("FAILED", "TIMEOUT")), FAIL, "ended FAILED without a result"),
        (JobFacts(False, ("", "")), FAIL, "unknown to the scheduler"),
        (None, FAIL, "is gone"),  # the scheduler was not asked
    ],
)
def test_verdicts_on_an_orphans_submitted_jobs(job: JobFacts | None, action: str,
                                               why: str) -> None:
    verdict = judge(running(**SUBMITTED), now=NOW, grace_s=120, others_maybe_alive=False,
                    alive=lambda _: False, job=job)
    assert verdict.action == action and why in verdict.reason, verdict
    assert "SLURM job 10, 11" in verdict.reason or job is None


def test_a_live_drivers_trial_is_left_whatever_its_job_says() -> None:
    verdict = judge(running(**SUBMITTED), now=NOW, grace_s=120, others_maybe_alive=True,
                    alive=lambda _: True, job=JobFacts(True, ("COMPLETED", "COMPLETED")))
    assert verdict.action == LEAVE and not verdict.orphan


def test_an_orphan_never_submitted_is_failed_even_when_jobs_are_looked_up() -> None:
    launched = {attrs.LAUNCH: {"driver": "h:1:1", "overrides": ["x=1"]}}  # in-process
    verdict = judge(running(**launched), now=NOW, grace_s=120, others_maybe_alive=False,
                    alive=lambda _: False, job=JobFacts(True, ("COMPLETED",)))
    assert verdict.action == FAIL


def test_recovery_tells_attaches_and_fails_by_the_jobs_facts() -> None:
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    facts = {"1": JobFacts(True, ("COMPLETED",)), "2": JobFacts(False, ("RUNNING",)),
             "3": JobFacts(False, ("CANCELLED by 0",))}
    for job_id in facts:
        t = study.ask(dist)
        t.set_user_attr(attrs.LAUNCH, attrs.launch_record("h:1:1", [f"x={t.params['x']}"],
                        job=attrs.LaunchedJobs("slurm", "/tmp/s/%j", (job_id,))))
    asked: list[list[str]] = []

    def lookup(recs: Sequence[attrs.LaunchedJobs]) -> list[JobFacts]:
        asked.append([i for r in recs for i in r.ids])
        return [facts[r.ids[0]] for r in recs]

    done = recover_orphans(study, grace_s=120, max_retries=1, alive=lambda _: False,
                           lookup=lookup)
    assert asked == [["1", "2", "3"]]  # one lookup for all of them
    assert [t.number for t in done.adopt] == [0, 1] and done.failed == [2]
    states = [t.state for t in study.trials]
    assert states == [TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL,
                      TrialState.WAITING]  # the cancelled job's params queued again
    assert "CANCELLED" in study.trials[2].user_attrs[attrs.ERROR]


def test_fail_and_retry_enqueues_the_params_until_the_retries_are_used() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={attrs.SOURCE: "llm"})
    t = study.ask({"x": FloatDistribution(0, 1)})
    assert fail_and_retry(study, study.trials[0], "job lost", max_retries=1)
    retry = study.ask({"x": FloatDistribution(0, 1)})
    assert retry.params == {"x": 0.25}
    assert retry.user_attrs[attrs.RETRY_OF] == t.number
    assert retry.user_attrs[attrs.SOURCE] == "llm"  # the proposal's provenance goes along
    assert not fail_and_retry(study, study.trials[1], "job lost", max_retries=1)
    first, second = study.trials[:2]
    assert first.user_attrs[attrs.RETRIED] and attrs.RETRIED not in second.user_attrs
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


# ------------------------------------------------------------------ the loop, no process
def make_plan(*args: str, **options: Any) -> SweepPlan:
    config = OmegaConf.create({
        "x": 0.0, "kind": "a",
        "hydra": {"sweep": {"dir": "/tmp/hpo-loop-test", "subdir": "${hydra.job.num}"},
                  "runtime": {"choices": {}}},
    })
    opts = {"storage": "memory", "progress": False, "seed": 0, "heartbeat_interval_s": 0,
            "fallback_sampler": None,
            "heartbeat_grace_s": 10, **options}
    return build_plan(HPOSweeperConf(**opts), list(args or ["x=interval(-5, 5)"]), config,
                      group_options=lambda g: [], launcher=LauncherFacts())


class Runner:
    """Runs a trial's jobs in the slot thread: the quadratic of its overrides."""

    def __init__(self, result: Callable[[dict[str, str]], Any] | None = None,
                 delay: float = 0.0) -> None:
        self.result = result or (lambda o: (float(o["x"]) - 2) ** 2)
        self.delay = delay
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.calls: list[list[list[str]]] = []

    def __call__(self, jobs: list[list[str]], number: int) -> list[JobReturn]:
        with self.lock:
            self.calls.append(jobs)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay)
            out = []
            for i, overrides in enumerate(jobs):
                values = dict(o.split("=", 1) for o in overrides if "env_set" not in o)
                value = self.result(values)
                status = JobStatus.FAILED if isinstance(value, BaseException) else (
                    JobStatus.COMPLETED)
                hydra = {"hydra": {"runtime": {"output_dir": f"/tmp/hpo-loop-test/{number + i}"},
                                   "job": {"id": number + i}}}
                out.append(job(value, status, hydra))
            return out
        finally:
            with self.lock:
                self.running -= 1


def sweep(plan: SweepPlan, runner: Runner, sampler: Any = None,
          study: optuna.Study | None = None) -> optuna.Study:
    sampler = sampler or build_sampler(plan)
    study = study or open_study(plan, sampler, build_pruner(plan.pruner))
    return SlotLoop(plan, study, sampler, runner, driver=DRIVER).run()


def test_loop_runs_the_budget_in_parallel_slots_and_writes_one_attr_per_launch() -> None:
    plan = make_plan(n_trials=7, n_jobs=3)
    runner = Runner(delay=0.05)
    study = sweep(plan, runner)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 7
    assert 1 < runner.most_running <= 3  # slots refill, never more than n_jobs in flight
    for t in trials:
        assert t.value == pytest.approx((t.params["x"] - 2) ** 2)
        assert t.user_attrs[attrs.LAUNCH] == {
            "driver": DRIVER, "overrides": [f"x={t.params['x']!r}"]}
        # derivable: not stored, derived from the driver's pattern
        assert attrs.OUTPUT_DIR not in t.user_attrs and attrs.JOB_ID not in t.user_attrs
    assert set(trials[0].user_attrs) == {attrs.LAUNCH}


def test_loop_resumes_within_the_budget_and_extends_it() -> None:
    plan = make_plan(n_trials=3)
    study = sweep(plan, Runner())
    again = sweep(plan, Runner(), study=study)
    assert len(again.trials) == 3  # already done: nothing runs
    sweep(make_plan(n_trials=5), Runner(), study=study)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]


def test_lost_jobs_are_retried_and_do_not_use_the_budget() -> None:
    plan = make_plan(n_trials=4, max_retries=1, max_failure_rate=1.0)
    lost: set[str] = set()

    def lose_each_x_once(o: dict[str, str]) -> Any:
        if o["x"] not in lost:
            lost.add(o["x"])
            return RuntimeError("job lost")  # a task error: failed, not retried
        return 0.0

    study = sweep(plan, Runner(lose_each_x_once))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(study.trials) == 4 and len(failed) == 4  # a task's own error is not retried
    assert all(t.user_attrs[attrs.ERROR] == "RuntimeError: job lost" for t in failed)

    class Lost(Runner):
        def __call__(self, jobs: list[list[str]], number: int) -> list[JobReturn]:
            if number % 2 == 0 and number < 4:
                raise OSError("worker killed")
            return super().__call__(jobs, number)

    study = sweep(make_plan(n_trials=4, max_retries=1, max_failure_rate=1.0), Lost())
    by_state = {s: [t for t in study.trials if t.state == s] for s in TrialState}
    retried = by_state[TrialState.FAIL]
    assert [t.number for t in retried] == [0, 2]
    assert all("job lost: OSError: worker killed" in t.user_attrs[attrs.ERROR]
               and t.user_attrs[attrs.RETRIED] for t in retried)
    retries = [t for t in study.trials if attrs.RETRY_OF in t.user_attrs]
    assert sorted(t.user_attrs[attrs.RETRY_OF] for t in retries) == [0, 2]
    assert len(by_state[TrialState.COMPLETE]) == 4  # the budget: 4 trials that count


def test_failure_rate_stops_the_loop_and_fails_nothing_in_flight() -> None:
    plan = make_plan(n_trials=10, max_failure_rate=0.2)
    with pytest.raises(FailureRateExceeded, match="3 of 3 trials failed"):
        sweep(plan, Runner(lambda o: ValueError("bad")))


def test_the_planners_stop_ends_the_loop_and_its_last_trial_does_not_run() -> None:
    plan = make_plan(n_trials=10, n_jobs=2)
    sampler = StoppingSampler(after=3)
    runner = Runner()
    study = sweep(plan, runner, sampler=sampler)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    last = study.trials[-1]
    assert last.user_attrs[attrs.ERROR] == "not run: the planner asked to stop: enough"
    assert last.user_attrs[attrs.RETRIED]  # not in the budget
    assert len(runner.calls) == 3
    assert sampler.prefetched and sampler.prefetched[0] == 2  # asked for both free slots


@pytest.mark.parametrize("on_interrupt", ["keep", "cancel"])
def test_an_interrupted_driver_fails_its_in_process_trials_without_using_a_retry(
    on_interrupt: str,
) -> None:
    plan = make_plan(n_trials=3, max_retries=0, on_interrupt=on_interrupt)

    def ctrl_c(o: dict[str, str]) -> Any:  # Ctrl-C while the driver waits for this job
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        return 1.0

    study = open_study(plan, build_sampler(plan), build_pruner(plan.pruner))
    loop = SlotLoop(plan, study, study.sampler, Runner(ctrl_c), driver=DRIVER)
    with pytest.raises(Interrupted) as info:
        loop.run()
    assert info.value.signum == signal.SIGINT and info.value.exit_code == 130
    assert loop.interrupted_in_flight == 1 and loop.finished() == 0
    # an in-process trial cannot run on without its driver (keep or not): failed, queued again
    # with its retry count unchanged, although max_retries=0
    (t, retry) = study.trials
    assert t.state == TrialState.FAIL and t.user_attrs[attrs.ERROR] == "interrupted (SIGINT)"
    assert t.user_attrs[attrs.RETRIED]
    assert retry.state == TrialState.WAITING and retry.user_attrs[attrs.RETRY_OF] == 0
    assert retry.user_attrs[attrs.RETRY_COUNT] == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_conditional_params_are_asked_only_when_they_apply() -> None:
    plan = make_plan("kind=a,b", "x=interval(-5, 5)", n_trials=8,
                     conditions={"x": "kind=b"})
    study = sweep(plan, Runner(lambda o: float(o.get("x", 0.0))))
    kinds = {t.params["kind"] for t in study.trials}
    assert kinds == {"a", "b"}
    for t in study.trials:
        assert ("x" in t.params) == (t.params["kind"] == "b")


def test_k_fold_trials_tell_the_mean_and_store_the_folds() -> None:
    plan = dataclasses.replace(make_plan(n_trials=2), folds=3, output_dir_pattern=None)
    fold_values = iter([1.0, 2.0, 6.0, 1.0, 1.0, 1.0])
    study = sweep(plan, Runner(lambda o: next(fold_values)))
    first, second = study.trials
    assert first.value == 3.0 and first.user_attrs[attrs.FOLDS] == [1.0, 2.0, 6.0]
    assert first.user_attrs[attrs.FOLD_STD] == pytest.approx(2.6457513)
    assert second.value == 1.0
    # not derivable here: the first fold's output dir is stored
    assert first.user_attrs[attrs.OUTPUT_DIR] == "/tmp/hpo-loop-test/0"



def test_the_end_of_sweep_lines_name_the_results_file_report_and_dashboard(
    tmp_path: Path,
) -> None:
    plan = make_plan(storage=f"sqlite:///{tmp_path / 'my db.db'}", study_name="s1")
    lines = summary_commands(plan, tmp_path / "optimization_results.yaml")
    url = shlex.quote(f"sqlite:///{tmp_path / 'my db.db'}")
    assert lines == [
        f"results:   {tmp_path / 'optimization_results.yaml'}",
        f"report:    python -m hpo.report --storage {url} --study s1 --out report/",
        f"dashboard: python -m hpo.dashboard --storage {url}",
    ]
    assert summary_commands(make_plan(), None) == []  # in memory, nothing written
