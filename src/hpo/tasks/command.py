"""The external-command task: tune any program that reads parameters and writes metrics.

``python -m hpo.train --config-name command -m command.params.lr=...`` runs, for each trial,
``command.argv`` (no shell) or ``command.shell`` (``/bin/sh -c``) with the trial's parameters
(``command.params``) handed over three ways:

- placeholders in the arguments: ``{params.lr}`` (or ``{lr}``), and ``{python}`` (this
  interpreter), ``{output_dir}``, ``{params_file}``, ``{trial_number}``, ``{seed}``; in
  ``shell`` every substituted value is shell-quoted, so write placeholders unquoted;
- environment variables ``HPO_PARAM_<NAME>`` (upper case, ``.`` and ``-`` become ``_``) and
  ``HPO_PARAMS_JSON`` (all of them), plus ``HPO_OUTPUT_DIR``, ``HPO_SEED``, ``HPO_PARAMS_FILE``;
- a JSON or YAML file, ``command.params_file`` (by suffix), written into the output directory.

The child runs in the job's output directory, in a session of its own (so a timeout kills its
whole process group), without the LLM providers' API keys in its environment. Its output is
logged line by line and copied to ``program.log``. While it runs, new rows of the curves CSV
become intermediate values (``trial.report``) and the pruner may stop it. When it ends, the
objective(s) are read from ``command.metrics_file``: a JSON document (dotted keys such as
``val.acc``) or a CSV (one column per objective; the ``last`` row or the ``max``/``min`` row of
the first objective). Per-class scores (a JSON ``per_class`` dict, or CSV columns
``<metric>_class_<name>``) become the trial user attr ``per_class``; the CSV rows become
``curves``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from hpo.errors import ConfigError, HPOError, MetricNotFoundError

__all__ = [
    "CommandError",
    "CommandFailedError",
    "CommandSpec",
    "CommandTimeoutError",
    "MetricsTable",
    "env_name",
    "read_metrics",
    "render_args",
    "run",
]

log = logging.getLogger(__name__)

LOG_FILE = "program.log"
REDUCES = ("last", "max", "min")
# Kept out of the child's environment: the LLM lives in the driver, the program needs no key.
_SECRET_ENV = (
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY",
    "OPENROUTER_API_KEY", "HPO_LOCAL_API_KEY",
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_PER_CLASS_COLUMN = re.compile(r"^(?P<metric>.+?)_class_(?P<name>.+)$")
_STEP_COLUMNS = ("epoch", "step", "iteration", "iter")
_STDERR_TAIL = 5
_TERM_GRACE_S = 5.0


class CommandError(HPOError, RuntimeError):
    """The command could not run, failed, or left no usable metrics."""


class CommandFailedError(CommandError):
    """The command exited with a non-zero code (or was killed by a signal)."""


class CommandTimeoutError(CommandError, TimeoutError):
    """The command ran longer than ``command.timeout_s`` and was killed."""


@dataclass
class CommandSpec:
    """What to run and how to read its result; built from ``cfg.command`` by :meth:`from_cfg`.

    Args:
        argv: The program and its arguments (no shell), or None when ``shell`` is given.
        shell: A ``/bin/sh -c`` command line, or None when ``argv`` is given.
        params: The trial's parameters, flattened to dotted names.
        params_file: File (JSON or YAML by suffix) to write the parameters to, relative to the
            output directory; None for no file.
        env: Extra environment variables for the child (values may hold placeholders).
        metrics_file: The JSON or CSV file the command writes its metrics to (relative to the
            output directory).
        curves_file: A CSV whose rows are reported as intermediate values while the command
            runs; by default ``metrics_file`` when it is a CSV.
        objective_keys: Keys (JSON, dotted) or columns (CSV) of the objective(s).
        report_key: CSV column reported as the intermediate value; default the first objective.
        reduce: Which CSV row gives the objective(s): ``last``, or the row where the first
            objective is ``max`` or ``min``.
        timeout_s: Kill the command after this many seconds; None for no limit.
        poll_s: Seconds between looks at the curves file (and pruning checks).
        prune: Ask the sweep's pruner after each new intermediate value.
    """

    argv: list[str] | None
    shell: str | None
    params: dict[str, Any]
    params_file: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    metrics_file: str = "metrics.json"
    curves_file: str | None = None
    objective_keys: list[str] = field(default_factory=lambda: ["objective"])
    report_key: str | None = None
    reduce: str = "last"
    timeout_s: float | None = None
    poll_s: float = 2.0
    prune: bool = True

    def __post_init__(self) -> None:
        if (self.argv is None) == (self.shell is None):
            raise ConfigError(
                "command.argv and command.shell are both "
                f"{'set' if self.argv is not None else 'unset'}: give exactly one, e.g. "
                "command.argv=[python,train.py,--lr={params.lr}]"
            )
        if self.argv is not None and not self.argv:
            raise ConfigError("command.argv=[] is empty: give the program and its arguments")
        if self.reduce not in REDUCES:
            raise ConfigError(
                f"command.reduce={self.reduce!r} is unknown: use one of {', '.join(REDUCES)}"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(
                f"command.timeout_s={self.timeout_s!r} must be positive: give seconds or null"
            )
        if not self.poll_s > 0:
            raise ConfigError(f"command.poll_s={self.poll_s!r} must be positive: pass e.g. 2")
        if not self.objective_keys:
            raise ConfigError("no objective key: set objective= or command.objective_key=")
        for path in (self.metrics_file, self.curves_file, self.params_file):
            if path is not None and not str(path).strip():
                raise ConfigError("an empty file name in command.*_file: give a name or null")
        if self.params_file is not None and _suffix(self.params_file) not in (
            ".json", ".yaml", ".yml"
        ):
            raise ConfigError(
                f"command.params_file={self.params_file!r} is neither .json nor .yaml: "
                "name it params.json or params.yaml"
            )
        if _suffix(self.metrics_file) not in (".json", ".csv"):
            raise ConfigError(
                f"command.metrics_file={self.metrics_file!r} is neither .json nor .csv: "
                "write metrics.json or metrics.csv"
            )
        if self.curves_file is None and _suffix(self.metrics_file) == ".csv":
            self.curves_file = self.metrics_file
        if self.curves_file is not None and _suffix(self.curves_file) != ".csv":
            raise ConfigError(
                f"command.curves_file={self.curves_file!r} is not a .csv: give a CSV or null"
            )

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> CommandSpec:
        """The spec of ``cfg.command``, with the objective keys defaulting to ``objective``."""
        node = cfg.get("command")
        if node is None:
            raise ConfigError("the config has no `command` node: use --config-name command")
        c = OmegaConf.to_container(node, resolve=True)
        assert isinstance(c, dict)
        keys = c.get("objective_key")
        if keys is None:
            keys = cfg.get("objective", "objective")
            keys = OmegaConf.to_container(keys) if OmegaConf.is_config(keys) else keys
        keys_l = [str(k) for k in keys] if isinstance(keys, list | tuple) else [str(keys)]
        argv = c.get("argv")
        if argv is not None and not isinstance(argv, list):
            raise ConfigError(
                f"command.argv={argv!r} is not a list: write [prog, arg, ...] or use "
                "command.shell for a command line"
            )
        params = c.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"command.params={params!r} is not a mapping: write {{lr: 0.01}}")
        env = c.get("env") or {}
        if not isinstance(env, dict):
            raise ConfigError(f"command.env={env!r} is not a mapping: write {{NAME: value}}")
        timeout = c.get("timeout_s")
        return cls(
            argv=None if argv is None else [str(a) for a in argv],
            shell=None if c.get("shell") is None else str(c["shell"]),
            params=flatten(params),
            params_file=_opt_str(c.get("params_file")),
            env={str(k): str(v) for k, v in env.items()},
            metrics_file=str(c.get("metrics_file") or "metrics.json"),
            curves_file=_opt_str(c.get("curves_file")),
            objective_keys=keys_l,
            report_key=_opt_str(c.get("report_key")),
            reduce=str(c.get("reduce") or "last"),
            timeout_s=None if timeout is None else float(timeout),
            poll_s=float(c.get("poll_s") or 2.0),
            prune=bool(c.get("prune", True)),
        )


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _suffix(path: str) -> str:
    return Path(path).suffix.lower()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts as one level with dotted names: ``{"opt": {"lr": 1}}`` ->
    ``{"opt.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix=f"{name}."))
        else:
            out[name] = v
    return out


def env_name(name: str) -> str:
    """The environment variable of parameter ``name``: ``HPO_PARAM_`` + upper case, with every
    character other than a letter, digit or underscore replaced by ``_``."""
    return "HPO_PARAM_" + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


def format_value(value: Any) -> str:
    """A parameter value as text for an argument or an environment variable.

    Floats keep full precision (``repr``), booleans are ``true``/``false``, None is ``null``,
    lists and dicts are JSON.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def render_args(
    template: str, values: Mapping[str, Any], *, quote: bool = False
) -> str:
    """``template`` with its placeholders replaced.

    ``{params.NAME}`` must name a parameter (else :class:`ConfigError`); ``{NAME}`` is replaced
    when ``values`` has it and kept literally otherwise (so braces of JSON or shell code pass).

    Args:
        template: One argument, or a whole shell command line.
        values: Placeholder values: ``params.NAME`` and ``NAME`` for each parameter, plus the
            built-ins (``python``, ``output_dir``, ...).
        quote: Shell-quote each substituted value (for ``command.shell``).

    Returns:
        The rendered text.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            if name.startswith("params."):
                known = sorted(k[len("params."):] for k in values if k.startswith("params."))
                raise ConfigError(
                    f"placeholder {{{name}}} names no parameter: command.params has "
                    f"{', '.join(known) or 'none'}; add +command.params.{name[7:]}=<value>"
                )
            return m.group(0)
        text = format_value(values[name])
        return shlex.quote(text) if quote else text

    return _PLACEHOLDER.sub(sub, template)


# --------------------------------------------------------------------------- metrics files


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
    if _suffix(path.name) == ".json":
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


# --------------------------------------------------------------------------- the child process


class _Reporter:
    """Intermediate values, curves and heartbeats of the running command, through storage."""

    def __init__(self, spec: CommandSpec, out_dir: Path) -> None:
        self.spec = spec
        self.trial: Any = None
        self.multi = False
        self.reported: set[int] = set()
        self.curves_path = None if spec.curves_file is None else out_dir / spec.curves_file
        self._mtime: float | None = None
        self._storage: Any = None
        self._beat_every = 0.0
        self._last_beat = 0.0
        self._error_logged = False
        from hpo import trial_context

        ctx = trial_context.current()
        if ctx is None:
            return
        try:
            self.trial = trial_context.open_trial(ctx)
            self.multi = len(self.trial.study.directions) > 1
            storage = trial_context.open_storage(ctx.storage)
            if ctx.heartbeat_s > 0 and hasattr(storage, "record_heartbeat"):
                self._storage, self._beat_every = storage, ctx.heartbeat_s
        except Exception:
            log.warning("cannot open trial %d of study %r: the command runs without reporting",
                        ctx.trial_number, ctx.study_name, exc_info=True)
            self.trial = None

    def _safe(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            if not self._error_logged:
                self._error_logged = True
                log.warning("%s failed: the command goes on", what, exc_info=True)
            return None

    def beat(self) -> None:
        now = time.monotonic()
        if self._storage is not None and self.trial is not None and (
            now - self._last_beat >= self._beat_every
        ):
            self._last_beat = now
            self._safe("recording the heartbeat", self._storage.record_heartbeat,
                       self.trial._trial_id)

    def poll(self) -> bool:
        """Report new curve rows; True when the pruner says stop."""
        self.beat()
        if self.trial is None or self.curves_path is None:
            return False
        try:
            mtime = self.curves_path.stat().st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            text = self.curves_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        table = MetricsTable.parse(text, complete_lines_only=True)
        return self.report(table)

    def report(self, table: MetricsTable) -> bool:
        """Report ``table``'s rows not reported yet; store curves; True when to prune."""
        if self.trial is None or not table.rows:
            return False
        key = self.spec.report_key or self.spec.objective_keys[0]
        j = table.column(key)
        new = False
        if j is not None and not self.multi:
            for i, row in enumerate(table.rows):
                step, v = table.step_of(i), row[j]
                if v is None or step in self.reported or not math.isfinite(v):
                    continue
                self.reported.add(step)
                new = True
                self._safe("trial.report", self.trial.report, v, step)
        self._safe("storing curves", self.trial.set_user_attr, "curves", table.curves())
        if new and self.spec.prune:
            return bool(self._safe("trial.should_prune", self.trial.should_prune))
        return False

    def set_attr(self, key: str, value: Any) -> None:
        if self.trial is not None:
            self._safe(f"storing {key}", self.trial.set_user_attr, key, value)


def _child_env(spec: CommandSpec, values: Mapping[str, Any], out_dir: Path,
               params_path: Path | None, seed: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["HPO_OUTPUT_DIR"] = str(out_dir)
    env["HPO_PARAMS_JSON"] = json.dumps(spec.params)
    if seed is not None:
        env["HPO_SEED"] = str(seed)
    if params_path is not None:
        env["HPO_PARAMS_FILE"] = str(params_path)
    for name, value in spec.params.items():
        env[env_name(name)] = format_value(value)
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python children: lines as they come
    for k, v in spec.env.items():
        env[k] = render_args(v, values)
    return env


def _write_params_file(path: Path, params: Mapping[str, Any]) -> None:
    if _suffix(path.name) == ".json":
        text = json.dumps(dict(params), indent=2) + "\n"
    else:
        text = OmegaConf.to_yaml(OmegaConf.create(dict(params)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL it after a grace period."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a finished leader
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_TERM_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_TERM_GRACE_S)


class _Pump(threading.Thread):
    """Copy one output stream of the child to the log and to ``program.log``, line by line."""

    def __init__(self, stream: IO[bytes], name: str, sink: IO[str], lock: threading.Lock,
                 secrets: list[str], tail: deque[str] | None = None) -> None:
        super().__init__(name=f"hpo-command-{name}", daemon=True)
        self.stream, self.name, self.sink, self.lock = stream, name, sink, lock
        self.secrets, self.tail = secrets, tail

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            for secret in self.secrets:
                line = line.replace(secret, "***")
            if self.tail is not None and line.strip():
                self.tail.append(line.strip())
            if self.name == "stderr":
                log.info("[stderr] %s", line)
            else:
                log.info("| %s", line)
            with self.lock:
                self.sink.write(line + "\n")
                self.sink.flush()
        self.stream.close()


def _secret_values() -> list[str]:
    from hpo.secrets import secret_values

    return secret_values()


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def run(cfg: DictConfig) -> float | list[float]:
    """Run ``cfg.command`` once for this trial and return its objective value(s).

    The task function of ``conf/command.yaml`` (``task._target_``); see the module docstring
    for how parameters reach the program and how its metrics are read.

    Args:
        cfg: The whole job config; uses ``command``, ``objective`` and ``seed``.

    Returns:
        One float, or a list of floats (one per objective) for multi-objective studies.

    Raises:
        ConfigError: The ``command`` node is invalid.
        CommandFailedError: The program exited non-zero; the message has the exit code and the
            last lines of its standard error.
        CommandTimeoutError: It ran past ``command.timeout_s``.
        MetricNotFoundError: An objective is not in its metrics file.
        optuna.TrialPruned: The pruner stopped it.
    """
    spec = CommandSpec.from_cfg(cfg)
    out_dir = _output_dir().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    from hpo import trial_context

    ctx = trial_context.current()
    seed = cfg.get("seed")
    params_path = None if spec.params_file is None else (out_dir / spec.params_file)
    values: dict[str, Any] = {
        "python": sys.executable,
        "output_dir": str(out_dir),
        "params_file": "" if params_path is None else str(params_path),
        "trial_number": "" if ctx is None else ctx.trial_number,
        "seed": "" if seed is None else seed,
    }
    for name, value in spec.params.items():
        values[f"params.{name}"] = value
        values.setdefault(name, value)
    if spec.argv is not None:
        args: list[str] | str = [render_args(a, values) for a in spec.argv]
        shown = shlex.join(args)
    else:
        assert spec.shell is not None
        args = render_args(spec.shell, values, quote=True)
        shown = args
    if params_path is not None:
        _write_params_file(params_path, spec.params)
    env = _child_env(spec, values, out_dir, params_path, seed)
    metrics_path = out_dir / spec.metrics_file
    # a stale file of an earlier run in a reused directory must not be read as this run's
    for stale in {metrics_path, *([out_dir / spec.curves_file] if spec.curves_file else [])}:
        stale.unlink(missing_ok=True)

    log.info("running in %s: %s", out_dir, shown)
    reporter = _Reporter(spec, out_dir)
    elapsed, code, tail = _run_child(args, spec, out_dir, env, reporter)
    if code != 0:
        raise _failure(code, elapsed, tail)

    metrics = read_metrics(metrics_path, spec.objective_keys, reduce=spec.reduce)
    table = metrics.table
    if table is None and spec.curves_file is not None:
        curves_path = out_dir / spec.curves_file
        if curves_path.is_file():
            table = MetricsTable.parse(curves_path.read_text(encoding="utf-8", errors="replace"))
    if table is not None:
        reporter.report(table)  # rows written after the last poll
    if metrics.per_class:
        reporter.set_attr("per_class", metrics.per_class)
    shown_v = ", ".join(f"{k}={v:.6g}" for k, v in zip(spec.objective_keys, metrics.values,
                                                       strict=True))
    print(f"objective: {shown_v}", flush=True)
    if any(not math.isfinite(v) for v in metrics.values):
        log.warning("objective is not finite: %s", shown_v)
    return metrics.values[0] if len(metrics.values) == 1 else metrics.values


def _run_child(args: list[str] | str, spec: CommandSpec, out_dir: Path, env: dict[str, str],
               reporter: _Reporter) -> tuple[float, int, list[str]]:
    """Run the child to its end; return (seconds, exit code, last stderr lines). Raise on
    timeout or pruning."""
    import optuna

    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    lock = threading.Lock()
    started = time.monotonic()
    with open(out_dir / LOG_FILE, "a", encoding="utf-8") as sink:
        try:
            proc = subprocess.Popen(
                args, shell=isinstance(args, str), cwd=out_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as exc:
            first = args[0] if isinstance(args, list) else "/bin/sh"
            raise CommandError(
                f"cannot start {first!r}: {exc.strerror or exc}; check command.argv[0] (use "
                "{python} for this interpreter, or an absolute path)"
            ) from None
        assert proc.stdout is not None and proc.stderr is not None
        secrets = _secret_values()
        pumps = [
            _Pump(proc.stdout, "stdout", sink, lock, secrets),
            _Pump(proc.stderr, "stderr", sink, lock, secrets, tail),
        ]
        for p in pumps:
            p.start()
        try:
            while True:
                waited = spec.poll_s
                if spec.timeout_s is not None:
                    left = spec.timeout_s - (time.monotonic() - started)
                    if left <= 0:
                        _kill_group(proc)
                        raise CommandTimeoutError(
                            f"the command ran past command.timeout_s={spec.timeout_s:g} s and "
                            "was killed: raise the timeout or make the run shorter"
                        )
                    waited = min(waited, left)
                try:
                    proc.wait(timeout=waited)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if reporter.poll():
                    step = max(reporter.reported) if reporter.reported else 0
                    _kill_group(proc)
                    reporter.set_attr("pruned_at_epoch", step)
                    log.info("pruned at step %d: the command was stopped", step)
                    raise optuna.TrialPruned(f"pruned at step {step}")
            reporter.poll()
        finally:
            _kill_group(proc)  # its children, if it left any behind
            for p in pumps:
                p.join(timeout=10.0)
    elapsed = time.monotonic() - started
    code = int(proc.returncode)
    log.info("the command exited with code %d after %.1f s", code, elapsed)
    return elapsed, code, list(tail)


def _failure(code: int, elapsed: float, lines: list[str]) -> CommandFailedError:
    what = f"exited with code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            what = f"was killed by {signal.Signals(-code).name}"
    detail = " | ".join(lines)[-400:] if lines else "nothing on stderr"
    return CommandFailedError(
        f"the command {what} after {elapsed:.1f} s: {detail} (full output in {LOG_FILE})"
    )

