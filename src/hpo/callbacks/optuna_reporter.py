"""Report a trial's learning curve to its Optuna trial through storage, and prune it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import lightning as L
import optuna

from hpo.attrs import (
    CURVES,
    HOST,
    PER_CLASS,
    PRUNED_AT_EPOCH,
    SLURM_JOB_ID,
    SLURM_RESTARTS,
)
from hpo.callbacks._epochs import COLUMNS, TRAIN_KEYS, VAL_KEYS, EpochTable, as_float
from hpo.errors import MetricNotFoundError
from hpo.trial_context import TrialContext, current, open_trial

__all__ = ["OptunaReporter"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class OptunaReporter(L.Callback):
    """Send each validation epoch's ``monitor`` value to the Optuna trial; prune when told.

    After each validation (sanity check excluded) it calls ``trial.report(value, epoch)``, stores
    the curves so far as the trial user attr ``curves`` (``{"epoch": [...], "train/loss": [...],
    "val/loss": [...], "val/acc": [...], "val/f1": [...], "lr": [...]}``, whichever exist, 6
    significant digits, None for gaps) and the module's ``per_class`` scores as ``per_class``;
    then, if ``prune`` and the pruner says so, sets the user attr ``pruned_at_epoch`` and raises
    :class:`optuna.TrialPruned`. The training means of an epoch exist only after its validation,
    so they join ``curves`` at the end of the training epoch.

    Without a trial context (a plain run outside a sweep) it does nothing. A storage error is
    logged once and training goes on; only rank 0 talks to storage and the prune decision is
    broadcast to all ranks.

    Args:
        monitor: Logged metric to report, e.g. ``"val/acc"`` (the study's objective).
        ctx: Trial context; default :func:`hpo.trial_context.current`.
        prune: Ask the pruner after each report and stop the trial when it says so.
        pruner: Pruner deciding ``should_prune``. A study loaded from storage does not remember
            the pruner it was created with, so pass the sweep's one; None keeps the loaded
            study's default (Optuna's ``MedianPruner``).
    """

    def __init__(
        self,
        *,
        monitor: str,
        ctx: TrialContext | None = None,
        prune: bool = True,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor={monitor!r} is not a metric name: pass e.g. 'val/acc'")
        self.monitor = monitor
        self.ctx = ctx if ctx is not None else current()
        self.prune = bool(prune)
        self.pruner = pruner
        self.trial: optuna.trial.Trial | None = None
        self._opened = False
        self._error_logged = False
        self._multi_objective = False
        self._reported: set[int] = set()
        self._table = EpochTable()

    @property
    def active(self) -> bool:
        """Whether a trial is open to report to."""
        return self.trial is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the trial once (rank 0, fit stage)."""
        if stage != "fit" or self._opened or self.ctx is None:
            return
        self._opened = True
        if not trainer.is_global_zero:
            return
        try:
            self.trial = open_trial(self.ctx)
        except Exception:
            log.warning("cannot open trial %d of study %r: training goes on without reporting",
                        self.ctx.trial_number, self.ctx.study_name, exc_info=True)
            return
        if self.pruner is not None:
            self.trial.study.pruner = self.pruner
        for key, value in placement_attrs().items():
            self._safe(f"storing {key}", self.trial.set_user_attr, key, value, default=None)
        self._multi_objective = len(self.trial.study.directions) > 1
        if self._multi_objective:
            log.info("study %r has several objectives: reporting curves, not pruning",
                     self.ctx.study_name)

    def _safe(self, what: str, fn: Callable[..., T], *args: Any, default: T) -> T:
        """``fn(*args)``, or ``default`` after logging a storage error (once at warning)."""
        try:
            return fn(*args)
        except Exception:
            if not self._error_logged:
                self._error_logged = True
                log.warning("%s failed for trial %s: training goes on (further storage errors "
                            "logged at debug level)", what, self._trial_label(), exc_info=True)
            else:
                log.debug("%s failed for trial %s", what, self._trial_label(), exc_info=True)
            return default

    def _trial_label(self) -> str:
        return "?" if self.ctx is None else f"{self.ctx.study_name}#{self.ctx.trial_number}"

    def _write_attrs(self, pl_module: L.LightningModule) -> None:
        assert self.trial is not None
        names = self._table.names((*COLUMNS, self.monitor))
        self._safe("storing curves", self.trial.set_user_attr, CURVES,
                   self._table.curves(names), default=None)
        per_class = getattr(pl_module, "per_class", None)
        if per_class:
            self._safe("storing per_class", self.trial.set_user_attr, PER_CLASS,
                       per_class, default=None)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the monitored value, store curves, and prune if the pruner says so."""
        if trainer.sanity_checking or self.ctx is None:
            return
        if trainer.state.fn != "fit":  # e.g. the final validate() on the best checkpoint
            return
        epoch = int(trainer.current_epoch)
        should_prune = False
        value: float | None = None
        if self.trial is not None:
            if self.monitor not in trainer.callback_metrics:
                raise MetricNotFoundError(
                    f"monitored metric {self.monitor!r} was not logged; logged: "
                    f"{sorted(trainer.callback_metrics)}: set the objective to one of them"
                )
            value = as_float(trainer.callback_metrics[self.monitor])
            self._table.capture(trainer, (*VAL_KEYS, self.monitor))
            if not self._multi_objective and value is not None and epoch not in self._reported:
                self._reported.add(epoch)
                self._safe("trial.report", self.trial.report, value, epoch, default=None)
            self._write_attrs(pl_module)
            if self.prune and not self._multi_objective:
                should_prune = self._safe("trial.should_prune", self.trial.should_prune,
                                          default=False)
        should_prune = bool(trainer.strategy.broadcast(should_prune, src=0))
        if should_prune:
            if self.trial is not None:
                self._safe("storing pruned_at_epoch", self.trial.set_user_attr,
                           PRUNED_AT_EPOCH, epoch, default=None)
            shown = "?" if value is None else f"{value:.4g}"
            log.info("trial %s pruned at epoch %d: %s=%s", self._trial_label(), epoch,
                     self.monitor, shown)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.monitor}={shown}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add the epoch's training means and learning rate to the stored curves."""
        if self.trial is None:
            return
        self._table.capture(trainer, TRAIN_KEYS)
        self._write_attrs(pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Curves and reported epochs, so a resumed trial keeps its history."""
        return {**self._table.state_dict(), "reported": sorted(self._reported)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self._table.load_state_dict(state_dict)
        self._reported = {int(e) for e in state_dict.get("reported", [])}


def placement_attrs(environ: dict[str, str] | None = None) -> dict[str, Any]:
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
