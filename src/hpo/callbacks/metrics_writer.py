"""Write a trial's per-epoch metrics, curves plot and summary into its output directory."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import optuna

from hpo.callbacks._epochs import (
    COLUMNS,
    TRAIN_KEYS,
    VAL_KEYS,
    EpochTable,
    atomic_write,
    round_sig,
)

__all__ = ["MetricsWriter"]

log = logging.getLogger(__name__)

# metrics where lower is better; every other one is maximized
_LOWER_IS_BETTER = ("loss",)


class MetricsWriter(L.Callback):
    """Artifacts of one trial: ``metrics.csv``, ``curves.png`` and ``summary.json``.

    ``metrics.csv`` (columns ``epoch, train/loss, train/acc, val/loss, val/acc, val/f1, lr``) is
    rewritten after every epoch; ``curves.png`` (loss, accuracy, F1 and learning-rate panels) and
    ``summary.json`` (``status``, ``epochs``, ``last`` and ``best`` values with their epoch,
    ``num_parameters``, ``per_class``) at the end of fit, and also when fit stops on an exception
    (a pruned trial gets ``status: "pruned"``). Every file is written atomically (temporary file,
    then rename). Artifacts are audit copies: the study's state lives in Optuna storage.

    Args:
        out_dir: Directory to write into (created if missing); the job's run directory by
            default.
    """

    def __init__(self, *, out_dir: str | Path = ".") -> None:
        super().__init__()
        self.out_dir = Path(out_dir).expanduser()
        self._table = EpochTable()

    @property
    def csv_path(self) -> Path:
        """Path of ``metrics.csv``."""
        return self.out_dir / "metrics.csv"

    @property
    def plot_path(self) -> Path:
        """Path of ``curves.png``."""
        return self.out_dir / "curves.png"

    @property
    def summary_path(self) -> Path:
        """Path of ``summary.json``."""
        return self.out_dir / "summary.json"

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Capture the epoch's validation metrics (early: a pruning callback may stop fit)."""
        if not trainer.sanity_checking:
            self._table.capture(trainer, VAL_KEYS)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Capture the epoch's validation metrics again, with those logged at epoch end."""
        if not trainer.sanity_checking:
            self._table.capture(trainer, VAL_KEYS)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Capture the epoch's training means and rewrite ``metrics.csv``."""
        self._table.capture(trainer, TRAIN_KEYS)
        if trainer.is_global_zero:
            self._write_csv()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write all three files."""
        if trainer.is_global_zero:
            self._finish(pl_module, status="completed")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Write what exists so far, marked pruned or failed."""
        if not trainer.is_global_zero:
            return
        pruned = isinstance(exception, optuna.TrialPruned)
        try:
            self._finish(pl_module, status="pruned" if pruned else "failed",
                         error=None if pruned else f"{type(exception).__name__}: {exception}")
        except Exception:  # never hide the original exception
            log.warning("writing metrics after %s failed", type(exception).__name__,
                        exc_info=True)

    def _finish(self, pl_module: L.LightningModule, *, status: str,
                error: str | None = None) -> None:
        self._write_csv()
        self._write_plot()
        self._write_summary(pl_module, status=status, error=error)

    def _write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("epoch", *COLUMNS))
        for epoch in sorted(self._table.rows):
            row = self._table.rows[epoch]
            writer.writerow((epoch, *(_cell(row.get(name)) for name in COLUMNS)))
        atomic_write(self.csv_path, buf.getvalue())

    def _write_summary(self, pl_module: L.LightningModule, *, status: str,
                       error: str | None) -> None:
        rows = self._table.rows
        epochs = sorted(rows)
        last: dict[str, float | None] = {}
        best: dict[str, dict[str, Any]] = {}
        for name in self._table.names():
            seen = [(e, rows[e][name]) for e in epochs
                    if name in rows[e] and math.isfinite(rows[e][name])]
            if not seen:
                continue
            last[name] = round_sig(seen[-1][1])
            lower = any(tag in name for tag in _LOWER_IS_BETTER)
            pick = min if lower else max
            epoch, value = pick(seen, key=lambda ev: ev[1])
            if name != "lr":
                best[name] = {"value": round_sig(value), "epoch": epoch}
        num_parameters = getattr(pl_module, "num_parameters", None)
        if num_parameters is None:
            num_parameters = sum(p.numel() for p in pl_module.parameters())
        summary: dict[str, Any] = {
            "status": status,
            "epochs": len(epochs),
            "last_epoch": epochs[-1] if epochs else None,
            "last": last,
            "best": best,
            "num_parameters": int(num_parameters),
            "per_class": _per_class(pl_module),
        }
        if error is not None:
            summary["error"] = error
        atomic_write(self.summary_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")

    def _write_plot(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self._table.rows
        epochs = sorted(rows)
        fig = Figure(figsize=(10, 7), layout="constrained")
        FigureCanvasAgg(fig)
        panels = (
            ("loss", ("train/loss", "val/loss")),
            ("accuracy", ("train/acc", "val/acc")),
            ("macro F1", ("val/f1",)),
            ("learning rate", ("lr",)),
        )
        for i, (title, names) in enumerate(panels, start=1):
            ax = fig.add_subplot(2, 2, i)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            plotted: list[float] = []
            for name in names:
                points = [(e, rows[e][name]) for e in epochs if name in rows[e]]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=name)
                    plotted += ys
            if plotted:
                ax.legend(loc="best")
                if title == "learning rate" and all(y > 0 for y in plotted):
                    ax.set_yscale("log")
            ax.grid(alpha=0.3)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write(self.plot_path, buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        """The rows so far, so a resumed trial keeps its history."""
        return self._table.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows from a checkpoint."""
        self._table.load_state_dict(state_dict)


def _per_class(pl_module: L.LightningModule) -> dict[str, dict[str, float | None]]:
    per_class = getattr(pl_module, "per_class", None) or {}
    return {kind: {str(c): round_sig(float(v)) for c, v in scores.items()}
            for kind, scores in per_class.items()}


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return format(value, ".7g")  # metrics are float32: 7 significant digits
