"""Reading the program's results: the metrics file (JSON or CSV) and the curves CSV.

The objective(s) come from ``command.metrics_file``: a JSON document (dotted keys such as
``val.acc``) or a CSV (one column per objective; the ``last`` row or the ``max``/``min`` row of
the first objective). Per-class scores are a JSON ``per_class`` dict or CSV columns
``<metric>_class_<name>``; the CSV's numeric columns are the learning curves.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import MetricNotFoundError
from hpo.tasks.command.errors import CommandError
from hpo.tasks.command.spec import suffix

__all__ = ["CurvesFile", "Metrics", "MetricsTable", "read_metrics"]

log = logging.getLogger(__name__)

_PER_CLASS_COLUMN = re.compile(r"^(?P<metric>.+?)_class_(?P<name>.+)$")
_STEP_COLUMNS = ("epoch", "step", "iteration", "iter")



@dataclass
class MetricsTable:
    """The rows of a metrics CSV: ``header`` and rows of floats (None where a cell is empty or
    not a number)."""

    header: list[str]
    rows: list[list[float | None]]

    @classmethod
    def parse(cls, text: str, *, complete_lines_only: bool = False) -> MetricsTable:
        """Parse CSV text; with ``complete_lines_only`` a last line without newline (still being
        written) is ignored."""
        if complete_lines_only and text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.reader(io.StringIO(text))
        header: list[str] = []
        rows: list[list[float | None]] = []
        for raw in reader:
            if not raw or all(not c.strip() for c in raw):
                continue
            if not header:
                header = [c.strip() for c in raw]
                continue
            if len(raw) != len(header):
                continue  # a torn or malformed row
            rows.append([_to_float(c) for c in raw])
        return cls(header=header, rows=rows)

    def column(self, key: str) -> int | None:
        """Index of the column ``key``; ``val.acc`` also finds ``val/acc`` and ``val_acc``."""
        for variant in (key, key.replace(".", "/"), key.replace(".", "_"),
                        key.replace("/", "_")):
            if variant in self.header:
                return self.header.index(variant)
        return None

    def step_of(self, i: int) -> int:
        """The step of row ``i``: its ``epoch``/``step`` column when there is one, else ``i``."""
        for name in _STEP_COLUMNS:
            if name in self.header:
                v = self.rows[i][self.header.index(name)]
                if v is not None and math.isfinite(v):
                    return int(v)
        return i

    def curves(self) -> dict[str, list[Any]]:
        """Numeric columns as curves: ``{"epoch": [...], name: [...]}``, 6 significant digits;
        per-class columns are left out."""
        out: dict[str, list[Any]] = {"epoch": [self.step_of(i) for i in range(len(self.rows))]}
        for j, name in enumerate(self.header):
            if name in _STEP_COLUMNS or _PER_CLASS_COLUMN.match(name):
                continue
            col = [r[j] for r in self.rows]
            if any(v is not None for v in col):
                out[name] = [_round(v) for v in col]
        return out

    def per_class(self, i: int) -> dict[str, dict[str, float]]:
        """``{metric: {class: value}}`` from row ``i``'s ``<metric>_class_<name>`` columns."""
        out: dict[str, dict[str, float]] = {}
        for j, name in enumerate(self.header):
            m = _PER_CLASS_COLUMN.match(name)
            v = self.rows[i][j]
            if m and v is not None:
                out.setdefault(m.group("metric"), {})[m.group("name")] = v
        return out


def _to_float(cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _round(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def _json_lookup(doc: Any, key: str) -> Any:
    """``doc[key]``, else the dotted path ``key`` (``val.acc`` -> ``doc["val"]["acc"]``)."""
    if isinstance(doc, Mapping) and key in doc:
        return doc[key]
    node = doc
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            try:
                node = node[int(part)]
            except IndexError:
                raise KeyError(key) from None
        else:
            raise KeyError(key)
    return node


def _json_keys(doc: Any, prefix: str = "") -> list[str]:
    if not isinstance(doc, Mapping):
        return [prefix] if prefix else []
    out: list[str] = []
    for k, v in doc.items():
        if k == "per_class" and not prefix:
            continue
        out += _json_keys(v, f"{prefix}{k}.") if isinstance(v, Mapping) else [f"{prefix}{k}"]
    return out


def _number(value: Any, key: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CommandError(
            f"{key!r} in {path.name} is {value!r}, not a number: write a number there"
        )
    try:
        return float(value)
    except ValueError:
        raise CommandError(
            f"{key!r} in {path.name} is {value!r}, not a number: write a number there"
        ) from None


def _check_per_class(value: Any, path: Path) -> dict[str, Any] | None:
    """A JSON ``per_class`` entry as ``{metric: {class: float}}`` (or ``{class: float}``)."""
    if not isinstance(value, Mapping):
        log.warning("per_class in %s is not a mapping: ignored", path.name)
        return None
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            inner = {str(c): _round(_to_float(str(x))) for c, x in v.items()
                     if isinstance(x, int | float) and not isinstance(x, bool)}
            out[str(k)] = inner
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[str(k)] = _round(float(v))
    return out or None


@dataclass
class Metrics:
    """What a metrics file said: the objective values, per-class scores and curves."""

    values: list[float]
    per_class: dict[str, Any] | None = None
    table: MetricsTable | None = None


def read_metrics(path: Path, keys: Sequence[str], *, reduce: str = "last") -> Metrics:
    """Read the objective(s) ``keys`` from the JSON or CSV metrics file ``path``.

    Args:
        path: ``*.json`` (dotted keys) or ``*.csv`` (columns).
        keys: One key per objective.
        reduce: CSV only: the ``last`` row, or the row where the first key is ``max``/``min``.

    Returns:
        The values in the order of ``keys``, per-class scores when present, and for a CSV its
        table.

    Raises:
        CommandError: The file is missing or unreadable.
        MetricNotFoundError: A key is not in it.
    """
    if not path.is_file():
        raise CommandError(
            f"the command wrote no metrics file {str(path)!r}: write it from the program, or "
            "point command.metrics_file at the file it writes (relative to its working dir)"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    if suffix(path.name) == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CommandError(
                f"{path.name} is not valid JSON ({exc}): write it with json.dump"
            ) from None
        values = []
        for key in keys:
            try:
                raw = _json_lookup(doc, key)
            except KeyError:
                raise MetricNotFoundError(
                    f"objective key {key!r} is not in {path.name}; it has "
                    f"{', '.join(_json_keys(doc)) or 'no keys'}: set command.objective_key"
                ) from None
            values.append(_number(raw, key, path))
        per_class = None
        if isinstance(doc, Mapping) and "per_class" in doc:
            per_class = _check_per_class(doc["per_class"], path)
        return Metrics(values=values, per_class=per_class)

    table = MetricsTable.parse(text)
    cols = []
    for key in keys:
        j = table.column(key)
        if j is None:
            raise MetricNotFoundError(
                f"objective column {key!r} is not in {path.name}; it has "
                f"{', '.join(table.header) or 'no header'}: set objective= or "
                "command.objective_key"
            )
        cols.append(j)
    usable = [i for i, r in enumerate(table.rows) if r[cols[0]] is not None]
    if not usable:
        raise CommandError(
            f"{path.name} has no row with a value of {keys[0]!r}: write one row per epoch"
        )
    if reduce == "last":
        i = usable[-1]
    else:
        pick = max if reduce == "max" else min
        finite = [i for i in usable if math.isfinite(table.rows[i][cols[0]])]  # type: ignore[arg-type]
        i = pick(finite or usable, key=lambda r: table.rows[r][cols[0]])  # type: ignore[arg-type,return-value]
    row = table.rows[i]
    values = []
    for key, j in zip(keys, cols, strict=True):
        v = row[j]
        if v is None:
            raise CommandError(
                f"{path.name} row {i + 1} has no value of {key!r}: fill every objective column"
            )
        values.append(v)
    return Metrics(values=values, per_class=table.per_class(i) or None, table=table)




class CurvesFile:
    """The curves CSV of a running program, read again whenever it changed.

    Args:
        path: The CSV the program appends rows to.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None

    def poll(self) -> MetricsTable | None:
        """The complete rows so far when the file changed since the last look, else None."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return MetricsTable.parse(text, complete_lines_only=True)

    def read(self) -> MetricsTable | None:
        """All rows of the file as it is now; None when it does not exist."""
        if not self.path.is_file():
            return None
        return MetricsTable.parse(self.path.read_text(encoding="utf-8", errors="replace"))
