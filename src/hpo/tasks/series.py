"""Time series for forecasting: ETTh1-format CSV files and a synthetic seasonal series.

The ETT ("electricity transformer temperature") files have the columns ``date, HUFL, HULL,
MUFL, MULL, LUFL, LULL, OT`` (hourly rows for ETTh1); the target is usually ``OT`` (oil
temperature). :func:`synthetic_series` makes an offline stand-in with the same columns: daily and
weekly seasonality, a trend and noise, seeded. :class:`SeriesDataModule` cuts either into sliding
windows (``input_len`` steps in, ``pred_len`` steps of the target out), standardized with the
mean and deviation of the training part only.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hpo.errors import ConfigError, DataUnavailableError

__all__ = [
    "ETT_COLUMNS",
    "SeriesDataModule",
    "read_series_csv",
    "synthetic_series",
    "write_series_csv",
]

log = logging.getLogger(__name__)

ETT_COLUMNS = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
TIME_FEATURES = 4  # sin/cos of the hour of day and of the day of week
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def synthetic_series(
    *, n_steps: int = 24 * 7 * 20, seed: int = 0, noise: float = 0.3,
    start: str = "2016-07-01 00:00:00",
) -> tuple[list[str], list[str], np.ndarray]:
    """An hourly series in ETTh1 format: daily + weekly seasonality, trend, AR(1) noise.

    Every load column mixes a daily and a weekly wave with its own amplitude and phase; ``OT``
    follows a lagged mix of the loads plus its own daily cycle and a slow trend, so the other
    columns carry information about the target.

    Args:
        n_steps: Number of hourly rows.
        seed: Seed of amplitudes, phases and noise.
        noise: Standard deviation of the noise relative to the seasonal amplitude.
        start: Timestamp of the first row (``YYYY-MM-DD HH:MM:SS``).

    Returns:
        ``(dates, columns, values)``: the timestamps as text, the value column names
        (``HUFL`` ... ``OT``) and an array of shape ``(n_steps, 7)``.
    """
    if n_steps < 2:
        raise ConfigError(f"n_steps={n_steps!r} must be at least 2: pass e.g. 3360")
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps, dtype=np.float64)
    day, week = 2 * math.pi * t / 24.0, 2 * math.pi * t / (24.0 * 7)

    def ar_noise(scale: float) -> np.ndarray:
        e = rng.normal(0.0, scale, n_steps)
        out = np.empty(n_steps)
        acc = 0.0
        for i in range(n_steps):
            acc = 0.7 * acc + e[i]
            out[i] = acc
        return out

    loads = []
    for _ in range(6):
        a_d, a_w = rng.uniform(1.0, 3.0), rng.uniform(0.5, 2.0)
        p_d, p_w = rng.uniform(0, 2 * math.pi, 2)
        level = rng.uniform(-2.0, 8.0)
        loads.append(level + a_d * np.sin(day + p_d) + a_w * np.sin(week + p_w)
                     + ar_noise(noise * a_d * 0.5))
    mix = np.mean(loads, axis=0)
    lagged = np.concatenate([np.full(3, mix[0]), mix[:-3]])  # the target follows with a lag
    trend = np.linspace(0.0, rng.uniform(1.0, 3.0), n_steps)
    ot = 20.0 + 1.5 * (lagged - mix.mean()) + 2.0 * np.sin(day + rng.uniform(0, 2 * math.pi)) \
        + trend + ar_noise(noise)
    values = np.stack([*loads, ot], axis=1)
    t0 = datetime.strptime(start, _DATE_FORMAT)
    dates = [(t0 + timedelta(hours=i)).strftime(_DATE_FORMAT) for i in range(n_steps)]
    return dates, list(ETT_COLUMNS[1:]), values


def write_series_csv(path: str | Path, dates: Sequence[str], columns: Sequence[str],
                     values: np.ndarray) -> Path:
    """Write ``date`` plus ``columns`` as a CSV (the ETTh1 layout); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", *columns])
        for d, row in zip(dates, values, strict=True):
            w.writerow([d, *(f"{v:.6g}" for v in row)])
    return path


def read_series_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Read a CSV whose first column is ``date`` and the others numbers (ETTh1 layout).

    Returns:
        ``(dates, columns, values)`` with ``values`` of shape ``(rows, len(columns))``.

    Raises:
        DataUnavailableError: The file does not exist.
        ConfigError: It is not in that layout.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataUnavailableError(
            f"series file {str(path)!r} does not exist: give data.path (an absolute path, e.g. "
            "to ETTh1.csv) or data.synthetic=true"
        )
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().lower() != "date" or len(header) < 2:
            raise ConfigError(
                f"{path.name} does not start with a 'date' column and value columns (header "
                f"{header}): use the ETTh1 layout date,HUFL,...,OT"
            )
        columns = [c.strip() for c in header[1:]]
        dates: list[str] = []
        rows: list[list[float]] = []
        for n, raw in enumerate(reader, start=2):
            if not raw or not "".join(raw).strip():
                continue
            if len(raw) != len(header):
                raise ConfigError(f"{path.name} line {n} has {len(raw)} fields, not "
                                  f"{len(header)}: fix or cut that line")
            try:
                rows.append([float(c) for c in raw[1:]])
            except ValueError:
                raise ConfigError(f"{path.name} line {n} has a value that is not a number: "
                                  "fill gaps before training") from None
            dates.append(raw[0].strip())
    if not rows:
        raise ConfigError(f"{path.name} has no data rows: give a file with the series")
    return dates, columns, np.asarray(rows, dtype=np.float64)


def time_features(dates: Sequence[str]) -> np.ndarray:
    """``(len(dates), 4)``: sin/cos of the hour of day and of the day of week."""
    out = np.empty((len(dates), TIME_FEATURES), dtype=np.float64)
    for i, d in enumerate(dates):
        try:
            ts = datetime.fromisoformat(d)
        except ValueError:
            raise ConfigError(
                f"date {d!r} is not an ISO timestamp: write e.g. 2016-07-01 00:00:00 or set "
                "data.time_features=false"
            ) from None
        hour = 2 * math.pi * (ts.hour + ts.minute / 60) / 24
        dow = 2 * math.pi * ts.weekday() / 7
        out[i] = (math.sin(hour), math.cos(hour), math.sin(dow), math.cos(dow))
    return out


class _Windows(Dataset[tuple[torch.Tensor, ...]]):
    """Sliding windows: ``(x, x_time, y_time, y)`` with ``x`` of shape (input_len, features)."""

    def __init__(self, values: torch.Tensor, marks: torch.Tensor, target: int, starts: range,
                 input_len: int, pred_len: int, inputs: list[int]) -> None:
        self.values, self.marks, self.target = values, marks, target
        self.starts, self.input_len, self.pred_len = starts, input_len, pred_len
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        s = self.starts[i]
        m = s + self.input_len
        e = m + self.pred_len
        return (self.values[s:m][:, self.inputs], self.marks[s:m], self.marks[m:e],
                self.values[m:e, self.target])


class SeriesDataModule(L.LightningDataModule):
    """Sliding-window forecasting data from an ETTh1-format CSV or a synthetic series.

    The rows are split in time order into train, validation and test parts
    (``train_fraction``, ``val_fraction``, the rest); validation and test windows take their
    input from the rows before their part. Every column is standardized with the mean and
    standard deviation of the training rows, and metrics are computed on that scale (as in the
    Informer paper). A batch is ``(x, x_time, y_time, y)``: inputs ``(B, input_len,
    input_dim)``, their time features ``(B, input_len, time_dim)``, the forecast steps' time
    features ``(B, pred_len, time_dim)`` and the target ``(B, pred_len)``.

    ``input_dim``, ``time_dim``, ``input_len``, ``pred_len`` and ``target_index`` (the target's
    column among the inputs) are known right after ``__init__`` for a CSV header or a synthetic
    series, so the model can be built before ``setup``.

    Args:
        path: The CSV file (first column ``date``), unless ``synthetic``.
        synthetic: Use :func:`synthetic_series` instead of a file (offline, seeded).
        target: The column to forecast.
        features: ``"S"``: the target's own history only; ``"MS"``: all columns in, the
            target out.
        input_len: Steps of history per window.
        pred_len: Steps to forecast.
        batch_size: Windows per batch.
        train_fraction: Share of the rows for training, in (0, 1).
        val_fraction: Share of the rows for validation; the test part gets the rest.
        time_features: Feed hour-of-day and day-of-week features.
        stride: Step between consecutive training windows.
        num_workers: DataLoader worker processes.
        synthetic_steps: Rows of the synthetic series.
        seed: Seed of the synthetic series.
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        synthetic: bool = False,
        target: str = "OT",
        features: Literal["S", "MS"] = "S",
        input_len: int = 96,
        pred_len: int = 24,
        batch_size: int = 32,
        train_fraction: float = 0.6,
        val_fraction: float = 0.2,
        time_features: bool = True,
        stride: int = 1,
        num_workers: int = 0,
        synthetic_steps: int = 24 * 7 * 20,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not synthetic and not path:
            raise ConfigError("no series: give data.path (an ETTh1-format CSV) or "
                              "data.synthetic=true")
        if features not in ("S", "MS"):
            raise ConfigError(f"features={features!r} is unknown: use 'S' (target only) or "
                              "'MS' (all columns in, target out)")
        for name, value in (("input_len", input_len), ("pred_len", pred_len),
                            ("batch_size", batch_size), ("stride", stride)):
            if int(value) < 1:
                raise ConfigError(f"{name}={value!r} must be at least 1: pass a positive int")
        if not (0 < train_fraction < 1 and 0 < val_fraction < 1
                and train_fraction + val_fraction <= 1):
            raise ConfigError(
                f"train_fraction={train_fraction!r} and val_fraction={val_fraction!r} must be "
                "in (0, 1) with a sum of at most 1: pass e.g. 0.6 and 0.2"
            )
        self.save_hyperparameters()
        self.path = None if path is None else Path(path).expanduser()
        self.synthetic = bool(synthetic)
        self.target = str(target)
        self.features = features
        self.input_len, self.pred_len = int(input_len), int(pred_len)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.train_fraction, self.val_fraction = float(train_fraction), float(val_fraction)
        self.use_time_features = bool(time_features)
        self.stride = int(stride)
        self.synthetic_steps, self.seed = int(synthetic_steps), int(seed)
        self.columns = list(ETT_COLUMNS[1:]) if self.synthetic else self._header()
        if self.target not in self.columns:
            raise ConfigError(f"target={self.target!r} is not a column; the series has "
                              f"{', '.join(self.columns)}: set data.target to one of them")
        self.input_columns = [self.target] if features == "S" else list(self.columns)
        self.input_dim = len(self.input_columns)
        self.target_index = self.input_columns.index(self.target)
        self.time_dim = TIME_FEATURES if self.use_time_features else 0
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.train_set: _Windows | None = None
        self.val_set: _Windows | None = None
        self.test_set: _Windows | None = None

    def _header(self) -> list[str]:
        assert self.path is not None
        if not self.path.is_file():
            raise DataUnavailableError(
                f"series file {str(self.path)!r} does not exist: give data.path (an absolute "
                "path, e.g. to ETTh1.csv) or data.synthetic=true"
            )
        with self.path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if not header or header[0].strip().lower() != "date":
            raise ConfigError(f"{self.path.name} does not start with a 'date' column: use the "
                              "ETTh1 layout date,HUFL,...,OT")
        return [c.strip() for c in header[1:]]

    def model_kwargs(self) -> dict[str, int]:
        """The shapes a forecasting model is built with (see
        :func:`hpo.tasks.lightning.model_kwargs`)."""
        return {
            "input_dim": int(self.input_dim),
            "time_dim": int(self.time_dim),
            "input_len": int(self.input_len),
            "pred_len": int(self.pred_len),
            "target_index": int(self.target_index),
        }

    def load(self) -> tuple[list[str], list[str], np.ndarray]:
        """The raw series: ``(dates, columns, values)``."""
        if self.synthetic:
            return synthetic_series(n_steps=self.synthetic_steps, seed=self.seed)
        assert self.path is not None
        return read_series_csv(self.path)

    def setup(self, stage: str | None = None) -> None:
        """Load, standardize on the training rows and cut windows (once)."""
        if self.train_set is not None:
            return
        dates, columns, raw = self.load()
        n = len(raw)
        n_train = int(n * self.train_fraction)
        n_val = int(n * self.val_fraction)
        borders = {"train": (self.input_len, n_train), "val": (n_train, n_train + n_val),
                   "test": (n_train + n_val, n)}
        for split, (t0, t1) in borders.items():
            if split != "test" and t1 - t0 < self.pred_len:
                raise ConfigError(
                    f"the {split} part has {max(t1 - t0, 0)} forecast rows for pred_len="
                    f"{self.pred_len} and input_len={self.input_len} ({n} rows in all): use a "
                    "longer series or shorter windows"
                )
        train_rows = raw[:n_train]
        self.mean = train_rows.mean(axis=0)
        std = train_rows.std(axis=0)
        self.std = np.where(std > 1e-12, std, 1.0)
        scaled = (raw - self.mean) / self.std
        values = torch.as_tensor(scaled, dtype=torch.float32)
        marks = torch.as_tensor(
            time_features(dates) if self.use_time_features else np.zeros((n, 0)),
            dtype=torch.float32,
        )
        target = columns.index(self.target)
        inputs = [columns.index(c) for c in self.input_columns]

        def windows(t0: int, t1: int, stride: int) -> _Windows:
            starts = range(t0 - self.input_len, max(t1 - self.input_len - self.pred_len + 1,
                                                    t0 - self.input_len), stride)
            return _Windows(values, marks, target, starts, self.input_len, self.pred_len, inputs)

        self.train_set = windows(*borders["train"], self.stride)
        self.val_set = windows(*borders["val"], 1)
        self.test_set = windows(*borders["test"], 1)
        log.debug("series: %d rows, %d/%d/%d windows", n, len(self.train_set),
                  len(self.val_set), len(self.test_set))

    def _loader(self, dataset: _Windows | None, *, shuffle: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError("SeriesDataModule.setup() was not called: call it first")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training windows."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation windows in time order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        """Test windows in time order."""
        return self._loader(self.test_set, shuffle=False)

    def naive_mse(self, split: str = "val", *, season: int = 0) -> float:
        """MSE of a naive forecast on ``split`` (standardized scale), a baseline to beat.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            season: 0 repeats the last observed value; ``k > 0`` repeats the last ``k`` steps
                (seasonal naive, e.g. 24 for a daily cycle; needs ``k <= input_len``).
        """
        self.setup()
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        assert dataset is not None
        if season > self.input_len:
            raise ConfigError(f"season={season} is longer than input_len={self.input_len}")
        total, count = 0.0, 0
        for i in range(len(dataset)):
            s = dataset.starts[i]
            m = s + self.input_len
            hist = dataset.values[s:m, dataset.target]
            y = dataset.values[m:m + self.pred_len, dataset.target]
            if season <= 0:
                pred = hist[-1].expand(self.pred_len)
            else:
                idx = torch.arange(self.pred_len) % season
                pred = hist[-season:][idx]
            total += float(((pred - y) ** 2).sum())
            count += self.pred_len
        return total / max(count, 1)
