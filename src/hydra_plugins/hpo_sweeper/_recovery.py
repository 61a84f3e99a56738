"""Trials left RUNNING by a driver that is gone: judge them, fail them, re-run their params.

A driver names itself ``host:pid:start`` (the process start time tells a live pid from a
reused one). Each trial records its driver in ``hpo:launch`` when its job is launched; the study
lists its drivers in ``hpo:drivers``. On start, :func:`recover_orphans` judges every RUNNING
trial with :func:`judge` (a pure decision on those facts) and fails the orphans through
:func:`fail_and_retry`, which the slot loop also uses for jobs it loses.

Re-attaching to jobs that still run or already finished (SLURM, submitit) is a new verdict
of :func:`judge` plus a job lookup; see issue 14.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs

log = logging.getLogger(__name__)


def driver_id() -> str:
    """This process as a driver: ``host:pid:start``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid())}"


def _proc_start(pid: int) -> str:
    # the process start time (clock ticks since boot) tells a live pid from a reused one
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "?"


def driver_alive(driver: str) -> bool | None:
    """True/False for a driver on this host; None when it runs elsewhere (unknown)."""
    try:
        host, pid, start = driver.rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        return _proc_start(int(pid)) == start
    except ValueError:
        return None


@dataclass(frozen=True)
class Verdict:
    """What to do with a RUNNING trial found on start: leave it, or fail it as an orphan."""

    orphan: bool
    reason: str = ""


def judge(
    trial: FrozenTrial,
    *,
    now: float,
    grace_s: float,
    others_maybe_alive: bool,
    alive: Callable[[str], bool | None] = driver_alive,
) -> Verdict:
    """Whether a RUNNING ``trial`` is an orphan.

    Its driver is gone (on this host), or its last heartbeat (else its start) is older than
    ``grace_s`` for a driver elsewhere. A trial that names no driver (killed before launch)
    is an orphan when no driver registered on the study can still be alive.
    """
    driver = attrs.launch_driver(trial.user_attrs)
    is_alive = alive(driver) if driver is not None else None
    if driver is None and not others_maybe_alive:
        is_alive = False
    beat = trial.user_attrs.get(attrs.HEARTBEAT)
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = float(beat) if beat is not None else started
    if is_alive is False:
        return Verdict(True, f"orphaned: driver {driver or 'of this study'} is gone")
    if is_alive is None and now - last > grace_s:
        return Verdict(True, f"orphaned: no heartbeat for {now - last:.0f} s")
    return Verdict(False)


def recover_orphans(
    study: optuna.Study, *, grace_s: float, max_retries: int,
    alive: Callable[[str], bool | None] = driver_alive,
) -> list[int]:
    """Fail the orphaned RUNNING trials of ``study`` and re-enqueue them within the retries.

    Returns:
        The numbers of the trials failed.
    """
    now = time.time()
    drivers = [d["id"] for d in attrs.driver_records(study.user_attrs)]
    others_maybe_alive = any(alive(d) is not False for d in drivers)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        verdict = judge(t, now=now, grace_s=grace_s, others_maybe_alive=others_maybe_alive,
                        alive=alive)
        if verdict.orphan:
            fail_and_retry(study, t, verdict.reason, max_retries=max_retries)
            failed.append(t.number)
    return failed


def other_drivers_alive(study_attrs: dict[str, object], me: str) -> bool:
    """Whether a driver other than ``me`` (alive here, or on another host) shares the study."""
    return any(d["id"] != me and driver_alive(d["id"]) is not False
               for d in attrs.driver_records(study_attrs))


def fail_and_retry(
    study: optuna.Study, t: FrozenTrial, reason: str, *, max_retries: int,
    carry: Sequence[str] = (attrs.SOURCE, attrs.RATIONALE),
) -> bool:
    """Tell ``t`` FAIL (an infrastructure failure) and enqueue its params again while
    retries are left; the retry carries the ``carry`` attrs (the proposal's provenance).

    Returns:
        Whether a retry was enqueued (then ``t`` no longer counts in the budget).
    """
    retries = int(t.user_attrs.get(attrs.RETRY_COUNT, 0))
    retry = retries < max_retries
    storage = study._storage
    storage.set_trial_user_attr(t._trial_id, attrs.ERROR, reason)
    if retry:
        storage.set_trial_user_attr(t._trial_id, attrs.RETRIED, True)
    with contextlib.suppress(Exception):  # it may have finished meanwhile
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    if retry:
        user_attrs = {attrs.RETRY_OF: t.number, attrs.RETRY_COUNT: retries + 1}
        user_attrs.update({k: t.user_attrs[k] for k in carry if k in t.user_attrs})
        study.enqueue_trial(dict(t.params), user_attrs=user_attrs)
        log.warning("trial %d failed (%s): retrying it (%d/%d)", t.number, reason,
                    retries + 1, max_retries)
    else:
        log.warning("trial %d failed (%s); no retries left", t.number, reason)
    return retry
