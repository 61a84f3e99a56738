"""Per-epoch metric rows shared by the callbacks, and atomic file writes.

Lightning computes a training epoch's means only at ``on_train_epoch_end``, which runs after the
validation of that epoch, while per-class scores are final only at ``on_validation_end``. So the
callbacks capture validation metrics at validation (epoch) end and training metrics at training
epoch end, into one row per epoch.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

TRAIN_KEYS = ("train/loss", "train/acc", "lr")
VAL_KEYS = ("val/loss", "val/acc", "val/f1")
COLUMNS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1", "lr")


def as_float(value: Any) -> float | None:
    """``value`` (a tensor or number) as a Python float, or None when it is not one."""
    try:
        if hasattr(value, "item"):
            value = value.item()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def round_sig(value: float | None, digits: int = 6) -> float | None:
    """``value`` rounded to ``digits`` significant digits; None for missing or non-finite."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


class EpochTable:
    """Metric values by epoch: ``rows[epoch][name] = value``."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def capture(self, trainer: Any, keys: tuple[str, ...] | list[str]) -> dict[str, float]:
        """Copy ``keys`` that the trainer has from ``callback_metrics`` into this epoch's row."""
        metrics = trainer.callback_metrics
        row = self.rows.setdefault(int(trainer.current_epoch), {})
        for key in keys:
            if key in metrics:
                value = as_float(metrics[key])
                if value is not None:
                    row[key] = value
        return row

    def names(self, preferred: tuple[str, ...] = COLUMNS) -> list[str]:
        """Metric names present in any row: ``preferred`` ones first, in that order."""
        present = {name for row in self.rows.values() for name in row}
        return [n for n in preferred if n in present] + sorted(present - set(preferred))

    def curves(self, names: list[str] | None = None) -> dict[str, list[Any]]:
        """``{"epoch": [...], name: [...]}``, aligned by epoch, 6 significant digits, None gaps."""
        epochs = sorted(self.rows)
        out: dict[str, list[Any]] = {"epoch": epochs}
        for name in names if names is not None else self.names():
            out[name] = [round_sig(self.rows[e].get(name)) for e in epochs]
        return out

    def state_dict(self) -> dict[str, Any]:
        """The rows, for Lightning checkpoints."""
        return {"rows": {e: dict(r) for e, r in self.rows.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the rows from a checkpoint."""
        self.rows = {int(e): dict(r) for e, r in state.get("rows", {}).items()}


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
