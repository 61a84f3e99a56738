"""Handing a trial's parameters to the program: placeholders, environment, a params file.

- placeholders in the arguments: ``{params.NAME}`` (or ``{NAME}``), and ``{python}`` (this
  interpreter), ``{output_dir}``, ``{params_file}``, ``{trial_number}``, ``{seed}``, ``{fold}``,
  ``{folds}``; in ``command.shell`` every substituted value is shell-quoted;
- environment variables ``HPO_PARAM_<NAME>`` (upper case, characters other than letters,
  digits and ``_`` become ``_``) and ``HPO_PARAMS_JSON`` (all of them), plus
  ``HPO_OUTPUT_DIR``, ``HPO_SEED``, ``HPO_PARAMS_FILE``, ``HPO_FOLD`` and ``HPO_FOLDS``
  (``cv.fold``/``cv.folds``); the LLM providers' API keys are removed;
- a JSON or YAML file, ``command.params_file`` (by suffix), written into the output directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpo.errors import ConfigError
from hpo.tasks.command.spec import CommandSpec, suffix

__all__ = [
    "Invocation",
    "child_env",
    "env_name",
    "format_value",
    "placeholder_values",
    "prepare",
    "render_args",
    "write_params_file",
]

# Kept out of the child's environment: the LLM lives in the driver, the program needs no key.
SECRET_ENV = (
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY",
    "OPENROUTER_API_KEY", "HPO_LOCAL_API_KEY",
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")


@dataclass(frozen=True)
class Invocation:
    """The rendered command of one trial.

    Args:
        args: The argument list (``command.argv``) or the shell line (``command.shell``).
        shown: The command as one line, for the log.
        env: The child's whole environment.
        params_path: Where the parameters file was written; None for no file.
    """

    args: list[str] | str
    shown: str
    env: dict[str, str]
    params_path: Path | None


def prepare(
    spec: CommandSpec,
    out_dir: Path,
    *,
    trial_number: int | None = None,
    seed: Any = None,
    fold: int = 0,
    folds: int = 1,
    environ: Mapping[str, str] | None = None,
) -> Invocation:
    """Render the command for one trial and write its parameters file (if any).

    Args:
        spec: The command.
        out_dir: The trial's output directory (the child's working directory).
        trial_number: The trial's number; None outside a sweep.
        seed: The job's ``seed``.
        fold: ``cv.fold``.
        folds: ``cv.folds``.
        environ: The environment the child inherits; this process's by default.

    Raises:
        ConfigError: A ``{params.NAME}`` placeholder names no parameter.
    """
    params_path = None if spec.params_file is None else out_dir / spec.params_file
    values = placeholder_values(spec, out_dir=out_dir, params_path=params_path,
                                trial_number=trial_number, seed=seed, fold=fold, folds=folds)
    args: list[str] | str
    if spec.argv is not None:
        args = [render_args(a, values) for a in spec.argv]
        shown = shlex.join(args)
    else:
        assert spec.shell is not None
        args = render_args(spec.shell, values, quote=True)
        shown = args
    env = child_env(spec, values, os.environ if environ is None else environ)
    if params_path is not None:
        write_params_file(params_path, spec.params)
    return Invocation(args=args, shown=shown, env=env, params_path=params_path)


def placeholder_values(
    spec: CommandSpec,
    *,
    out_dir: Path,
    params_path: Path | None,
    trial_number: int | None,
    seed: Any,
    fold: int = 0,
    folds: int = 1,
) -> dict[str, Any]:
    """The values of every placeholder: ``params.NAME`` and ``NAME`` per parameter (a built-in
    name wins over a parameter's short name), and the built-ins."""
    values: dict[str, Any] = {
        "python": sys.executable,
        "output_dir": str(out_dir),
        "params_file": "" if params_path is None else str(params_path),
        "trial_number": "" if trial_number is None else trial_number,
        "seed": "" if seed is None else seed,
        "fold": fold,
        "folds": folds,
    }
    for name, value in spec.params.items():
        values[f"params.{name}"] = value
        values.setdefault(name, value)
    return values


def child_env(spec: CommandSpec, values: Mapping[str, Any],
              environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ``environ`` without API keys, plus the ``HPO_*`` variables and
    ``command.env`` (rendered)."""
    env = {k: v for k, v in environ.items() if k not in SECRET_ENV}
    env["HPO_OUTPUT_DIR"] = str(values["output_dir"])
    env["HPO_PARAMS_JSON"] = json.dumps(spec.params)
    env["HPO_FOLD"] = str(values["fold"])
    env["HPO_FOLDS"] = str(values["folds"])
    if values["seed"] != "":
        env["HPO_SEED"] = str(values["seed"])
    if values["params_file"]:
        env["HPO_PARAMS_FILE"] = str(values["params_file"])
    for name, value in spec.params.items():
        env[env_name(name)] = format_value(value)
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python children: lines as they come
    for k, v in spec.env.items():
        env[k] = render_args(v, values)
    return env


def write_params_file(path: Path, params: Mapping[str, Any]) -> None:
    """Write ``params`` as JSON or YAML (by ``path``'s suffix)."""
    if suffix(path.name) == ".json":
        text = json.dumps(dict(params), indent=2) + "\n"
    else:
        text = OmegaConf.to_yaml(OmegaConf.create(dict(params)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


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

