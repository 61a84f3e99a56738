"""Trials left RUNNING by a driver that is gone: judge them, fail them, re-run their params.

A driver names itself ``host:pid:start`` (the process start time tells a live pid from a
reused one). Each trial records its driver in ``hpo:launch`` when its job is launched; the study
lists its drivers (``hpo:drivers:<id>``). On start, :func:`recover_orphans` judges every RUNNING
trial with :func:`judge` (a pure decision on those facts) and fails the orphans through
:func:`fail_and_retry`, which the slot loop also uses for jobs it loses.

A trial submitted through submitit records its job ids (``hpo:launch``'s job). Before an
orphan is failed, the scheduler is asked about its job: a job that ended with a result is told
(nothing runs again), one that still runs or waits is re-attached (the slot loop waits for it in
a slot), and only a job that is gone fails the trial and re-runs its params.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.attrs import driver_alive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFacts:
    """What the scheduler and the file system say of a trial's job(s) right now.

    Attributes:
        results: Every job left its result file (it ended; its outcome can be read).
        states: The scheduler's state per job: sacct's (``RUNNING``, ``PENDING``,
            ``CANCELLED by 0``, ...) on SLURM, ``RUNNING`` or ``""`` for local processes;
            ``""`` when the scheduler does not know the job.
        known: The scheduler answered (False: sacct failed, the state is unknown).
    """

    results: bool
    states: tuple[str, ...]
    known: bool = True


LEAVE, FAIL, TELL, ATTACH = "leave", "fail", "tell", "attach"
# scheduler states of a job that still runs or will run (sacct's, and submitit's "RUNNING" for
# a live local process); anything else without a result is gone
_LIVE = ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
         "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "SIGNALING", "STAGE_OUT")


@dataclass(frozen=True)
class Verdict:
    """What to do with a RUNNING trial found on start.

    Attributes:
        action: ``leave`` it (its driver may be alive), ``fail`` it (and retry), ``tell`` its
            job's result (the job ended while no driver watched), or ``attach`` to its job
            (it still runs or waits in the queue) and wait for it in a slot.
        reason: Why, one line.
    """

    action: str
    reason: str = ""

    @property
    def orphan(self) -> bool:
        """Whether no live driver owns the trial."""
        return self.action != LEAVE


def judge(
    trial: FrozenTrial,
    *,
    now: float,
    grace_s: float,
    others_maybe_alive: bool,
    alive: Callable[[str], bool | None] = driver_alive,
    job: JobFacts | None = None,
) -> Verdict:
    """What to do with a RUNNING ``trial``.

    It is an orphan when its driver is gone (on this host), or its last heartbeat (else its
    start) is older than ``grace_s`` for a driver elsewhere. A trial that names no driver
    (killed before launch) is an orphan when no driver registered on the study can still be
    alive. An orphan whose job was submitted (``hpo:launch``'s job) is judged by ``job``, what
    the scheduler says of that job: every job left a result: ``tell``; one still runs or
    waits, or the scheduler cannot be asked: ``attach``; else (cancelled, failed, timed out,
    unknown to the scheduler, without a result): ``fail``. Without ``job`` an orphan is failed.
    """
    driver = attrs.launch_driver(trial.user_attrs)
    is_alive = alive(driver) if driver is not None else None
    if driver is None and not others_maybe_alive:
        is_alive = False
    beat = trial.user_attrs.get(attrs.HEARTBEAT)
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = float(beat) if beat is not None else started
    if is_alive is False:
        why = f"orphaned: driver {driver or 'of this study'} is gone"
    elif is_alive is None and now - last > grace_s:
        why = f"orphaned: no heartbeat for {now - last:.0f} s"
    else:
        return Verdict(LEAVE)
    rec = attrs.launch_job(trial.user_attrs)
    if rec is None or job is None:
        return Verdict(FAIL, why)
    what = f"{'SLURM' if rec.executor == 'slurm' else 'local'} job {', '.join(rec.ids)}"
    if job.results:
        return Verdict(TELL, f"{why}; its {what} ended with a result")
    if not job.known:
        return Verdict(ATTACH, f"{why}; its {what} cannot be looked up (sacct failed): "
                               "waiting for it")
    live = [s for s in job.states if s.split(" ")[0] in _LIVE]
    if live:
        return Verdict(ATTACH, f"{why}; its {what} is {live[0].split(' ')[0]}")
    state = next((s for s in job.states if s), "unknown to the scheduler")
    return Verdict(FAIL, f"{why}; its {what} ended {state} without a result")


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_orphans` did and left to the slot loop.

    Attributes:
        failed: Numbers of the trials failed (their retries enqueued within ``max_retries``).
        adopt: Trials whose jobs this driver waits for (``tell`` and ``attach`` verdicts).
    """

    failed: list[int]
    adopt: list[FrozenTrial]


def recover_orphans(
    study: optuna.Study, *, grace_s: float, max_retries: int,
    alive: Callable[[str], bool | None] = driver_alive,
    lookup: Callable[[Sequence[attrs.LaunchedJobs]], list[JobFacts]] | None = None,
    slurm_job: str | None = None,
) -> Recovery:
    """Judge the RUNNING trials of ``study``: fail the orphans (re-enqueued within the
    retries) unless their jobs ended with a result or still run; those are handed back to be
    adopted.

    Args:
        study: The opened study.
        grace_s: The heartbeat grace of drivers on other hosts.
        max_retries: Retries of one set of params.
        alive: Whether a driver id is alive (None: cannot tell from here).
        lookup: What the scheduler says of submitted jobs (one call for all of them); None:
            orphans are failed without asking.
        slurm_job: The SLURM job this driver runs in (``hydra.sweeper.detach``): an earlier
            run of the same job is gone, whatever host it ran on.
    """
    now = time.time()
    records = attrs.driver_records(study.user_attrs)
    same_job = {d["id"] for d in records if slurm_job and d.get("slurm_job") == slurm_job}

    def alive_here(driver: str) -> bool | None:
        return False if driver in same_job else alive(driver)

    others_maybe_alive = any(alive_here(d["id"]) is not False for d in records)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    verdicts = {t.number: judge(t, now=now, grace_s=grace_s,
                                others_maybe_alive=others_maybe_alive, alive=alive_here)
                for t in running}
    submitted = [(t, rec) for t in running if verdicts[t.number].orphan
                 and (rec := attrs.launch_job(t.user_attrs)) is not None]
    if submitted and lookup is not None:
        found = lookup([rec for _, rec in submitted])
        for (t, _), job in zip(submitted, found, strict=True):
            verdicts[t.number] = judge(t, now=now, grace_s=grace_s,
                                       others_maybe_alive=others_maybe_alive,
                                       alive=alive_here, job=job)
    out = Recovery(failed=[], adopt=[])
    for t in running:
        verdict = verdicts[t.number]
        if verdict.action == FAIL:
            fail_and_retry(study, t, verdict.reason, max_retries=max_retries)
            out.failed.append(t.number)
        elif verdict.action in (TELL, ATTACH):
            log.info("trial %d re-attached (%s)", t.number, verdict.reason)
            out.adopt.append(t)
    return out


def other_drivers_alive(study_attrs: dict[str, object], me: str) -> bool:
    """Whether a driver other than ``me`` (alive here, or on another host) shares the study."""
    return any(d["id"] != me and driver_alive(d["id"]) is not False
               for d in attrs.driver_records(study_attrs))


def fail_and_retry(
    study: optuna.Study, t: FrozenTrial, reason: str, *, max_retries: int,
    carry: Sequence[str] = (attrs.SOURCE, attrs.RATIONALE), uses_retry: bool = True,
) -> bool:
    """Tell ``t`` FAIL (an infrastructure failure) and enqueue its params again while
    retries are left; the retry carries the ``carry`` attrs (the proposal's provenance).
    With ``uses_retry=False`` (the driver was interrupted) the params are always enqueued
    again and the retry count stays as it was.

    Returns:
        Whether a retry was enqueued (then ``t`` no longer counts in the budget).
    """
    retries = int(t.user_attrs.get(attrs.RETRY_COUNT, 0))
    retry = retries < max_retries or not uses_retry
    count = retries + 1 if uses_retry else retries
    storage = study._storage
    storage.set_trial_user_attr(t._trial_id, attrs.ERROR, reason)
    if retry:
        storage.set_trial_user_attr(t._trial_id, attrs.RETRIED, True)
    with contextlib.suppress(Exception):  # it may have finished meanwhile
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    if retry:
        user_attrs = {attrs.RETRY_OF: t.number, attrs.RETRY_COUNT: count}
        user_attrs.update({k: t.user_attrs[k] for k in carry if k in t.user_attrs})
        study.enqueue_trial(dict(t.params), user_attrs=user_attrs)
        if uses_retry:
            log.warning("trial %d failed (%s): retrying it (%d/%d)", t.number, reason,
                        count, max_retries)
        else:  # the driver is stopping on a signal: its one line says it all
            log.debug("trial %d failed (%s): queued again", t.number, reason)
    else:
        log.warning("trial %d failed (%s); no retries left", t.number, reason)
    return retry
