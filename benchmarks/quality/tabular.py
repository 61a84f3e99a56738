"""The tabulated digits benchmark: its grid, its table file, and how a sample is looked up.

``benchmarks/make_digits_table.py`` trains hpo's default task (``python -m hpo.train``: the MLP
on scikit-learn's digits, 20 epochs at most, early stopping on ``val/loss``) at every point of
:data:`GRID`, a grid over the default search space (``conf/search_space/default.yaml``), and
writes one JSON row per configuration to ``benchmarks/data/digits_mlp.jsonl.gz``.

Lookup (see :meth:`DigitsTable.lookup`): the benchmark's search space is the default space
itself (log floats, an interval, categoricals), and a sample is SNAPPED to the nearest grid
point, per parameter (nearest in log space for the log-scaled floats). So every value a sampler
can get is a value of the table, the table's best value is the problem's true optimum, and
regret is exact. Two samples that snap to the same point get the same value and curves, as two
runs of one configuration with the same seed would.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TABLE_PATH = DATA_DIR / "digits_mlp.jsonl.gz"
FORMAT = 1

LR = "optimizer.lr"
WD = "optimizer.weight_decay"
BATCH = "data.batch_size"
SMOOTHING = "model.label_smoothing"
OPTIMIZER = "optimizer"


def _log_grid(low_exp: float, high_exp: float, per_decade: int) -> tuple[float, ...]:
    n = round((high_exp - low_exp) * per_decade)
    return tuple(float(f"{10 ** (low_exp + i / per_decade):.6g}") for i in range(n + 1))


# The grid: 9 x 4 x 3 x 2 x 3 = 648 configurations (1-2 hours of training on 2 shared cores).
# Its extremes are the bounds of the default space; lr, the most sensitive knob, gets half
# decades, weight decay every other decade plus the top one, label smoothing its two bounds.
GRID: dict[str, tuple[Any, ...]] = {
    LR: _log_grid(-5, -1, 2),  # 1e-5, 3.16e-5, ..., 1e-1 (half decades)
    WD: (1e-6, 1e-4, 1e-2, 1e-1),
    BATCH: (32, 64, 128),
    SMOOTHING: (0.0, 0.2),
    OPTIMIZER: ("adamw", "adam", "sgd"),
}
LOG_PARAMS = (LR, WD)
# The configured defaults of the digits task (conf/optimizer/adamw.yaml, conf/data/digits.yaml,
# conf/model/mlp.yaml): the baseline trial of a sweep and the seed of "TPE seeded".
DEFAULTS: dict[str, Any] = {LR: 1e-3, WD: 1e-2, BATCH: 64, SMOOTHING: 0.0, OPTIMIZER: "adamw"}


def grid_points() -> Iterator[dict[str, Any]]:
    """Every configuration of :data:`GRID`, in a fixed order."""
    names = list(GRID)

    def rec(i: int, acc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(names):
            yield dict(acc)
            return
        for v in GRID[names[i]]:
            acc[names[i]] = v
            yield from rec(i + 1, acc)

    yield from rec(0, {})


def snap(params: Mapping[str, Any]) -> tuple[int, ...]:
    """The grid indices of the point nearest to ``params`` (log distance for log params).

    Raises:
        KeyError: A parameter of the grid is missing.
        ValueError: A categorical value is not one of the grid's.
    """
    key: list[int] = []
    for name, values in GRID.items():
        v = params[name]
        if isinstance(values[0], str) or name == BATCH:
            if v not in values:
                raise ValueError(f"{name}={v!r} is not one of {list(values)}")
            key.append(values.index(v))
            continue
        x = math.log10(float(v)) if name in LOG_PARAMS else float(v)
        grid = [math.log10(g) if name in LOG_PARAMS else float(g) for g in values]
        key.append(min(range(len(grid)), key=lambda i: abs(grid[i] - x)))
    return tuple(key)


def point(key: tuple[int, ...]) -> dict[str, Any]:
    """The grid configuration of a key from :func:`snap`."""
    return {name: values[i] for (name, values), i in zip(GRID.items(), key, strict=True)}


@dataclass(frozen=True)
class Row:
    """One trained configuration of the table.

    Attributes:
        params: The grid configuration (the sweep's parameter names).
        value: ``val/acc`` of the best checkpoint (the objective of ``python -m hpo.train``);
            None when the training failed.
        intermediate: ``val/acc`` per epoch as ``OptunaReporter`` reported it.
        curves: The ``curves`` user attr ``OptunaReporter`` stored (per-epoch train/val loss
            and accuracy, macro F1, learning rate).
        per_class: The ``per_class`` user attr of the last validation epoch.
        error: The first line of the exception when the training failed.
        fit_s: Wall seconds of the training here (what a real trial would have cost).
    """

    params: dict[str, Any]
    value: float | None
    intermediate: list[float]
    curves: dict[str, list[Any]]
    per_class: dict[str, Any] | None
    error: str | None
    fit_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params, "value": self.value, "intermediate": self.intermediate,
            "curves": self.curves, "per_class": self.per_class, "error": self.error,
            "fit_s": round(self.fit_s, 3),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Row:
        return cls(
            params=dict(d["params"]), value=d.get("value"),
            intermediate=list(d.get("intermediate") or []), curves=dict(d.get("curves") or {}),
            per_class=d.get("per_class"), error=d.get("error"), fit_s=float(d.get("fit_s", 0.0)),
        )


class DigitsTable:
    """The shipped table, indexed by grid key.

    Args:
        path: The ``.jsonl.gz`` file (a header line, then one :class:`Row` per line).

    Raises:
        FileNotFoundError: The table is missing (run ``benchmarks/make_digits_table.py``).
        ValueError: The file is not a table of this format, or misses grid points.
    """

    def __init__(self, path: Path = TABLE_PATH) -> None:
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run `nice -n 10 python benchmarks/make_digits_table.py` "
                "to build it (about an hour on 2 cores)"
            )
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            rows = [Row.from_json(json.loads(line)) for line in f if line.strip()]
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} has format {header.get('format')!r}, expected {FORMAT}: "
                             "rebuild it with benchmarks/make_digits_table.py")
        self.header: dict[str, Any] = header
        self.rows: dict[tuple[int, ...], Row] = {snap(r.params): r for r in rows}
        missing = sum(1 for p in grid_points() if snap(p) not in self.rows)
        if missing:
            raise ValueError(f"{path} misses {missing} grid point(s): finish it with "
                             "benchmarks/make_digits_table.py (it resumes)")

    def lookup(self, params: Mapping[str, Any]) -> Row:
        """The row of the grid point nearest to ``params`` (see the module docstring)."""
        return self.rows[snap(params)]

    def best_value(self) -> float:
        """The highest ``val/acc`` in the table: the problem's optimum."""
        return max(r.value for r in self.rows.values() if r.value is not None)

    def worst_value(self) -> float:
        """The lowest ``val/acc`` in the table."""
        return min(r.value for r in self.rows.values() if r.value is not None)
