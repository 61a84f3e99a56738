"""What to run and how to read its result: ``CommandSpec``, built from the ``command`` node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpo.errors import ConfigError

__all__ = ["REDUCES", "CommandSpec", "flatten", "suffix"]

REDUCES = ("last", "max", "min")


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
        if self.params_file is not None and suffix(self.params_file) not in (
            ".json", ".yaml", ".yml"
        ):
            raise ConfigError(
                f"command.params_file={self.params_file!r} is neither .json nor .yaml: "
                "name it params.json or params.yaml"
            )
        if suffix(self.metrics_file) not in (".json", ".csv"):
            raise ConfigError(
                f"command.metrics_file={self.metrics_file!r} is neither .json nor .csv: "
                "write metrics.json or metrics.csv"
            )
        if self.curves_file is None and suffix(self.metrics_file) == ".csv":
            self.curves_file = self.metrics_file
        if self.curves_file is not None and suffix(self.curves_file) != ".csv":
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


def suffix(path: str) -> str:
    """The lower-case suffix of ``path`` (``.json``, ``.csv``, ...)."""
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

