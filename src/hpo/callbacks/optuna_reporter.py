"""Report a trial's learning curve to its Optuna trial through storage, and prune it."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import optuna

from hpo.callbacks._epochs import COLUMNS, TRAIN_KEYS, VAL_KEYS, EpochTable, as_float
from hpo.errors import MetricNotFoundError
from hpo.trial_context import TrialContext, TrialReporter, current

__all__ = ["OptunaReporter"]

log = logging.getLogger(__name__)


class OptunaReporter(L.Callback):
    """Send each validation epoch's ``monitor`` value to the Optuna trial; prune when told.

    After each validation (sanity check excluded) it calls ``trial.report(value, epoch)``, stores
    the curves so far as the trial user attr ``curves`` (``{"epoch": [...], "train/loss": [...],
    "val/loss": [...], "val/acc": [...], "val/f1": [...], "lr": [...]}``, whichever exist, 6
    significant digits, None for gaps) and the module's ``per_class`` scores as ``per_class``;
    then, if ``prune`` and the pruner says so, sets the user attr ``pruned_at_epoch`` and raises
    :class:`optuna.TrialPruned`. The training means of an epoch exist only after its validation,
    so they join ``curves`` at the end of the training epoch. Under k-fold cross-validation
    (``fold`` given) the keys are ``curves_fold_<i>`` and ``per_class_fold_<i>`` and only fold 0
    reports values (see :mod:`hpo.trial_context`).

    Without a trial context (a plain run outside a sweep) it does nothing. A storage error is
    logged once and training goes on; only rank 0 talks to storage and the prune decision is
    broadcast to all ranks. Storage goes through :class:`hpo.trial_context.TrialReporter`, the
    same one the external-command task uses.

    Args:
        monitor: Logged metric to report, e.g. ``"val/acc"`` (the study's objective).
        ctx: Trial context; default :func:`hpo.trial_context.current`.
        prune: Ask the pruner after each report and stop the trial when it says so.
        pruner: Pruner deciding ``should_prune``. A study loaded from storage does not remember
            the pruner it was created with, so pass the sweep's one; None takes the sweep's
            from ``HPO_PRUNER`` (no pruning without one).
        fold: ``cv.fold`` of this job under k-fold cross-validation; None otherwise.
    """

    def __init__(
        self,
        *,
        monitor: str,
        ctx: TrialContext | None = None,
        prune: bool = True,
        pruner: optuna.pruners.BasePruner | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor={monitor!r} is not a metric name: pass e.g. 'val/acc'")
        self.monitor = monitor
        self.ctx = ctx if ctx is not None else current()
        self.reporter = TrialReporter(self.ctx, fold=fold, prune=prune, pruner=pruner,
                                      job="training")
        self._opened = False
        self._table = EpochTable()

    @property
    def active(self) -> bool:
        """Whether a trial is open to report to."""
        return self.reporter.active

    @property
    def trial(self) -> optuna.trial.Trial | None:
        """The open trial, or None."""
        trial: optuna.trial.Trial | None = self.reporter.trial
        return trial

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the trial once (rank 0, fit stage)."""
        if stage != "fit" or self._opened or self.ctx is None:
            return
        self._opened = True
        if trainer.is_global_zero:
            self.reporter.open()

    def _store(self, pl_module: L.LightningModule) -> None:
        names = self._table.names((*COLUMNS, self.monitor))
        self.reporter.store_curves(self._table.curves(names))
        per_class = getattr(pl_module, "per_class", None)
        if per_class:
            self.reporter.store_per_class(per_class)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the monitored value, store curves, and prune if the pruner says so."""
        if trainer.sanity_checking or self.ctx is None:
            return
        if trainer.state.fn != "fit":  # e.g. the final validate() on the best checkpoint
            return
        epoch = int(trainer.current_epoch)
        should_prune = False
        value: float | None = None
        if self.reporter.active:
            if self.monitor not in trainer.callback_metrics:
                raise MetricNotFoundError(
                    f"monitored metric {self.monitor!r} was not logged; logged: "
                    f"{sorted(trainer.callback_metrics)}: set the objective to one of them"
                )
            value = as_float(trainer.callback_metrics[self.monitor])
            self._table.capture(trainer, (*VAL_KEYS, self.monitor))
            self.reporter.report(value, epoch)
            self._store(pl_module)
            should_prune = self.reporter.should_prune()
        should_prune = bool(trainer.strategy.broadcast(should_prune, src=0))
        if should_prune:
            self.reporter.mark_pruned(epoch)
            shown = "?" if value is None else f"{value:.4g}"
            label = "?" if self.ctx is None else self.ctx.label
            log.debug("trial %s pruned at epoch %d: %s=%s", label, epoch, self.monitor, shown)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.monitor}={shown}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add the epoch's training means and learning rate to the stored curves."""
        if not self.reporter.active:
            return
        self._table.capture(trainer, TRAIN_KEYS)
        self._store(pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Curves and reported epochs, so a resumed trial keeps its history."""
        return {**self._table.state_dict(), "reported": sorted(self.reporter.reported)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self._table.load_state_dict(state_dict)
        self.reporter.reported = {int(e) for e in state_dict.get("reported", [])}
