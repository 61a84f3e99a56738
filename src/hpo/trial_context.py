"""How a trial job finds its Optuna trial and reports to it: the sweeper's contract with the job.

The sweeper (driver) sets these environment variables for each job through Hydra's
``hydra.job.env_set``, so the user's app config is never touched and the same path works for
the basic, submitit_local and submitit_slurm launchers. A job started without them (a plain
``python -m hpo.train``) has no trial context and reports nothing.

:class:`TrialReporter` is the job's one channel to its trial, shared by the Lightning callback
(:class:`hpo.callbacks.OptunaReporter`) and the external-command task: intermediate values,
curves, per-class scores, prune checks and provenance attrs, all through storage.

Trial user attrs a job writes:

- ``curves``: ``{"epoch": [...], "<metric>": [...]}``; ``per_class``: ``{"<metric>":
  {"<class>": value}}``; ``pruned_at_epoch``; ``hpo:host`` (and ``hpo:slurm_job_id``,
  ``hpo:slurm_restarts`` under SLURM);
- under k-fold cross-validation (``cv.folds > 1``) every fold job keeps its own
  ``curves_fold_<i>`` and ``per_class_fold_<i>`` (``i`` = ``cv.fold``) instead of ``curves``
  and ``per_class`` (:func:`fold_key`); only fold 0 reports intermediate values, and every fold
  asks the pruner (which judges the trial by fold 0's curve).
"""

from __future__ import annotations

import base64
import logging
import math
import os
import pickle
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hpo.attrs import CURVES, HOST, PER_CLASS, PRUNED_AT_EPOCH, SLURM_JOB_ID, SLURM_RESTARTS

__all__ = [
    "ENV_PRUNER",
    "ENV_STORAGE",
    "ENV_STUDY",
    "ENV_TRIAL_ID",
    "ENV_TRIAL_NUMBER",
    "TrialContext",
    "TrialReporter",
    "current",
    "decode_pruner",
    "encode_pruner",
    "fold_key",
    "job_fold",
    "open_storage",
    "open_trial",
    "per_class_across_folds",
    "placement_attrs",
    "record_attrs",
    "register_live_storage",
]

log = logging.getLogger(__name__)

ENV_STORAGE = "HPO_STORAGE"
ENV_STUDY = "HPO_STUDY"
ENV_TRIAL_NUMBER = "HPO_TRIAL_NUMBER"
ENV_TRIAL_ID = "HPO_TRIAL_ID"
ENV_PRUNER = "HPO_PRUNER"  # the sweep's pruner, pickled: a loaded study would forget it

# In-process registry for storages that cannot be reopened from a URL (in-memory storage with the
# basic launcher): the sweeper registers the live storage object under its URL key.
_LIVE_STORAGES: dict[str, object] = {}

T = TypeVar("T")


@dataclass(frozen=True)
class TrialContext:
    """Where the running job's trial lives in Optuna storage."""

    storage: str
    study_name: str
    trial_number: int
    trial_id: int

    def env(self) -> dict[str, str]:
        """The environment variables that carry this context to a job."""
        return {
            ENV_STORAGE: self.storage,
            ENV_STUDY: self.study_name,
            ENV_TRIAL_NUMBER: str(self.trial_number),
            ENV_TRIAL_ID: str(self.trial_id),
        }

    @property
    def label(self) -> str:
        """``study#number``, for log lines."""
        return f"{self.study_name}#{self.trial_number}"


def current() -> TrialContext | None:
    """The trial context of this process, or None outside a sweep."""
    storage = os.environ.get(ENV_STORAGE)
    study = os.environ.get(ENV_STUDY)
    number = os.environ.get(ENV_TRIAL_NUMBER)
    trial_id = os.environ.get(ENV_TRIAL_ID)
    if not (storage and study and number and trial_id):
        return None
    return TrialContext(
        storage=storage, study_name=study, trial_number=int(number), trial_id=int(trial_id)
    )


def register_live_storage(key: str, storage: object) -> None:
    """Make an in-process storage object reachable from in-process jobs by its key."""
    _LIVE_STORAGES[key] = storage


def open_storage(url: str) -> object:
    """The storage behind ``url``: a live in-process one if registered, else opened anew."""
    live = _LIVE_STORAGES.get(url)
    if live is not None:
        return live
    from hpo.storage import open_storage as _open

    return _open(url)


def encode_pruner(pruner: object) -> str:
    """``pruner`` as an environment-variable value (the driver writes it for its jobs)."""
    return base64.b64encode(pickle.dumps(pruner)).decode("ascii")


def decode_pruner() -> object | None:
    """The sweep's pruner from this process's environment; None when there is none."""
    raw = os.environ.get(ENV_PRUNER)
    if not raw:
        return None
    try:
        return pickle.loads(base64.b64decode(raw))  # written by our own driver
    except Exception:  # a foreign or stale value: better no pruning than a crash
        return None


def open_trial(ctx: TrialContext, pruner: object | None = None) -> Any:
    """The live ``optuna.trial.Trial`` of this job, for ``report`` and ``should_prune``.

    Args:
        ctx: Where the trial is.
        pruner: The pruner that decides ``should_prune``; by default the sweep's own
            (``HPO_PRUNER``), and without one, no pruning.
    """
    import optuna

    storage = open_storage(ctx.storage)
    chosen = pruner or decode_pruner() or optuna.pruners.NopPruner()
    study = optuna.load_study(
        study_name=ctx.study_name, storage=storage, pruner=chosen  # type: ignore[arg-type]
    )
    return optuna.trial.Trial(study, ctx.trial_id)


# --------------------------------------------------------------------------- cross-validation


def job_fold(cv: Mapping[str, Any] | None) -> int | None:
    """The fold this job validates on (``cv.fold``) when ``cv.folds > 1``, else None.

    Args:
        cv: The ``cv`` node of the job's config (``folds``, ``fold``), or None.
    """
    if not cv:
        return None
    folds = int(cv.get("folds", 1) or 1)
    return int(cv.get("fold", 0) or 0) if folds > 1 else None


def fold_key(key: str, fold: int | None) -> str:
    """The user-attr key a fold job writes ``key`` under: ``per_class`` -> ``per_class_fold_2``
    for fold 2; ``key`` itself outside cross-validation (``fold`` None)."""
    return key if fold is None else f"{key}_fold_{fold}"


def per_class_across_folds(
    per_fold: Sequence[Mapping[str, Mapping[str, float | None]]],
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Mean and sample standard deviation of each class's score across folds.

    Args:
        per_fold: One ``per_class`` mapping (``{metric: {class: value}}``) per fold, as stored
            under ``per_class_fold_<i>``.

    Returns:
        ``{"mean": {metric: {class: m}}, "std": {metric: {class: s}}}``; a class missing or
        non-finite in some folds is summarized over the others (std None with one value).
    """
    values: dict[str, dict[str, list[float]]] = {}
    for per_class in per_fold:
        for metric, scores in per_class.items():
            row = values.setdefault(str(metric), {})
            for cls, v in scores.items():
                col = row.setdefault(str(cls), [])
                if v is not None and math.isfinite(float(v)):
                    col.append(float(v))
    mean: dict[str, dict[str, float | None]] = {}
    std: dict[str, dict[str, float | None]] = {}
    for metric, row in values.items():
        mean[metric], std[metric] = {}, {}
        for cls, vs in row.items():
            m = sum(vs) / len(vs) if vs else None
            mean[metric][cls] = None if m is None else _round(m)
            std[metric][cls] = (
                None if m is None or len(vs) < 2
                else _round(math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1)))
            )
    return {"mean": mean, "std": std}


def _round(v: float) -> float:
    return float(f"{v:.6g}")


# --------------------------------------------------------------------------- the reporter


def placement_attrs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where this job runs, as trial user attrs: ``hpo:host``, and under SLURM
    ``hpo:slurm_job_id`` (``ARRAYID_TASKID`` for array tasks, as sacct names them) and
    ``hpo:slurm_restarts`` once the job was requeued (preemption)."""
    env = os.environ if environ is None else environ
    attrs: dict[str, Any] = {HOST: socket.gethostname()}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        attrs[SLURM_JOB_ID] = f"{array}_{task}"
    elif env.get("SLURM_JOB_ID"):
        attrs[SLURM_JOB_ID] = env["SLURM_JOB_ID"]
    restarts = env.get("SLURM_RESTART_COUNT", "")
    if restarts.isdigit() and int(restarts) > 0:
        attrs[SLURM_RESTARTS] = int(restarts)
    return attrs


class TrialReporter:
    """One job's channel to its Optuna trial: values, curves, per-class scores, pruning.

    Nothing touches storage before :meth:`open`; without a context, or when the trial cannot be
    opened, every method is a no-op (``should_prune`` says False). A storage error never stops
    the job: the first is logged as a warning naming ``job`` ("training goes on"), later ones at
    debug level.

    Args:
        ctx: The job's trial context; None outside a sweep.
        fold: ``cv.fold`` under k-fold cross-validation (see :func:`job_fold`), else None.
        prune: Whether :meth:`should_prune` asks the pruner at all.
        pruner: The pruner deciding ``should_prune``; by default the sweep's (``HPO_PRUNER``).
        job: What goes on after a storage error, for the log line (e.g. "training").
    """

    def __init__(
        self,
        ctx: TrialContext | None,
        *,
        fold: int | None = None,
        prune: bool = True,
        pruner: object | None = None,
        job: str = "the job",
    ) -> None:
        self.ctx = ctx
        self.fold = fold
        self.prune = bool(prune)
        self.pruner = pruner
        self.job = job
        self.trial: Any = None
        self.multi_objective = False
        self.reported: set[int] = set()
        self._error_logged = False

    @property
    def active(self) -> bool:
        """Whether a trial is open to report to."""
        return self.trial is not None

    @property
    def reports_values(self) -> bool:
        """Whether this job reports intermediate values: single objective, and fold 0 (or no
        cross-validation); the other folds would only repeat the steps fold 0 reported."""
        return self.active and not self.multi_objective and not self.fold

    def open(self) -> bool:
        """Open the trial and store where this job runs; True when it is open."""
        if self.trial is not None or self.ctx is None:
            return self.trial is not None
        try:
            self.trial = open_trial(self.ctx, self.pruner)
            self.multi_objective = len(self.trial.study.directions) > 1
        except Exception:
            log.warning("cannot open trial %d of study %r: %s goes on without reporting",
                        self.ctx.trial_number, self.ctx.study_name, self.job, exc_info=True)
            self.trial = None
            return False
        if self.multi_objective:
            log.debug("study %r has several objectives: curves, no reports, no pruning",
                      self.ctx.study_name)
        self.set_attrs(placement_attrs())
        return True

    def _safe(self, what: str, fn: Callable[..., T], *args: Any, default: T) -> T:
        """``fn(*args)``, or ``default`` after logging a storage error (once at warning)."""
        try:
            return fn(*args)
        except Exception:
            label = "?" if self.ctx is None else self.ctx.label
            if not self._error_logged:
                self._error_logged = True
                log.warning("%s failed for trial %s: %s goes on (further storage errors logged "
                            "at debug level)", what, label, self.job, exc_info=True)
            else:
                log.debug("%s failed for trial %s", what, label, exc_info=True)
            return default

    def report(self, value: float | None, step: int) -> bool:
        """Report ``value`` at ``step`` once (see :attr:`reports_values`); True if reported."""
        if not self.reports_values or value is None or not math.isfinite(value):
            return False
        if step in self.reported:
            return False
        self.reported.add(step)
        self._safe("trial.report", self.trial.report, float(value), int(step), default=None)
        return True

    def should_prune(self) -> bool:
        """Whether the pruner stops the trial now (never for multi-objective studies)."""
        if not self.active or not self.prune or self.multi_objective:
            return False
        return bool(self._safe("trial.should_prune", self.trial.should_prune, default=False))

    def store_curves(self, curves: Mapping[str, Any]) -> None:
        """Store the learning curves so far (``curves``, or ``curves_fold_<i>``)."""
        self.set_attrs({fold_key(CURVES, self.fold): dict(curves)})

    def store_per_class(self, per_class: Mapping[str, Any]) -> None:
        """Store per-class scores (``per_class``, or ``per_class_fold_<i>``)."""
        self.set_attrs({fold_key(PER_CLASS, self.fold): dict(per_class)})

    def mark_pruned(self, step: int) -> None:
        """Record the step the trial was pruned at (``pruned_at_epoch``)."""
        self.set_attrs({PRUNED_AT_EPOCH: int(step)})

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Set trial user attrs (no-op when no trial is open)."""
        if self.trial is None:
            return
        for key, value in attrs.items():
            self._safe(f"storing {key}", self.trial.set_user_attr, key, value, default=None)


def record_attrs(attrs: Mapping[str, Any], *, job: str = "the job") -> None:
    """Set user attrs on this process's trial, if it has one (provenance: never fails)."""
    reporter = TrialReporter(current(), job=job)
    if reporter.open():
        reporter.set_attrs(attrs)
