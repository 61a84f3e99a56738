"""One log line per epoch for runs outside a sweep."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import lightning as L

from hpo.callbacks._epochs import as_float

__all__ = ["EpochProgress"]

log = logging.getLogger(__name__)


class EpochProgress(L.Callback):
    """Log ``epoch 3/20: train/loss=0.412 val/loss=0.38 val/acc=0.912 (2.1 s)`` after each epoch.

    The line is logged when the training epoch ends, which Lightning runs after that epoch's
    validation, so both training means and validation values are there; metrics not logged
    (yet) are left out. Only rank 0 logs.

    Args:
        metrics: Names to show, in order (duplicates dropped).
    """

    def __init__(self, metrics: Sequence[str] = ("train/loss", "val/loss", "val/acc")) -> None:
        super().__init__()
        self.metrics = list(dict.fromkeys(metrics))
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's clock."""
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's line."""
        if trainer.is_global_zero:
            log.info("%s", self.line(trainer, time.monotonic() - self._started))

    def line(self, trainer: L.Trainer, seconds: float) -> str:
        """The text of the current epoch's line."""
        metrics = trainer.callback_metrics
        shown = []
        for name in self.metrics:
            value = as_float(metrics[name]) if name in metrics else None
            if value is not None:
                shown.append(f"{name}={value:.4g}")
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch + 1}/{total}: {' '.join(shown)} ({seconds:.1f} s)"
