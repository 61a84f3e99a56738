"""The best trial(s) of a study: ``optimization_results.yaml``, and a config that reruns them.

At the end of every sweep the sweeper calls :func:`write_results`, which writes
``<sweep dir>/optimization_results.yaml`` with hydra-optuna-sweeper's keys (``name``,
``best_params``, ``best_value``; ``solutions`` for several objectives) plus the trial's number
and the command that reruns it::

    name: optuna                      # as hydra-optuna-sweeper writes it
    study_name: hpo
    storage: sqlite:////abs/outputs/hpo.db
    direction: maximize
    objective: val/acc
    best_params: {optimizer.lr: 0.0031, model: cnn}
    best_value: 0.9722
    best_trial_number: 4
    command: python -m hpo.train model=cnn optimizer.lr=0.0031

With several objectives, ``directions``/``objectives`` are lists and the Pareto-optimal trials
are listed twice: ``best_trials`` (``number``, ``values``, ``params``, ``command`` each) and
``solutions`` (``params`` and ``values`` each, hydra-optuna-sweeper's form).

``python -m hpo.best [--storage URL] [--study NAME] [--trial N] [--export FILE]`` prints the
same from storage and, with ``--export best.yaml``, writes a primary config that extends the
app's own (``defaults: [train, override /model: cnn, _self_]`` plus the trial's values), rerun
with one command that it prints::

    python -m hpo.train --config-dir /abs/dir --config-name best

Everything is read from the storage: the trial's Hydra overrides (``hpo:launch``) and how the
sweep's app was started (``hpo:app``, written by :func:`write_results`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs
from hpo.errors import ConfigError, HPOError, first_line
from hpo.storage import load_existing_study, open_existing, redact_url

__all__ = [
    "RESULTS_FILE",
    "App",
    "Export",
    "app_of",
    "best_trials",
    "export_config",
    "main",
    "objective_names",
    "rerun_command",
    "results",
    "write_results",
]

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
DEFAULT_STORAGE = "sqlite:///outputs/hpo.db"
# Hydra's command-line flags that choose the app's configs (each takes a value)
_CONFIG_FLAGS = {"--config-path": "--config-path", "-cp": "--config-path",
                 "--config-dir": "--config-dir", "-cd": "--config-dir",
                 "--config-name": "--config-name", "-cn": "--config-name"}


# ---------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class App:
    """How a sweep's app is started, so that a trial can be rerun outside the sweep.

    Attributes:
        argv: The program (``python -m hpo.train``, ``python my_app.py``, ``hpo-train``) and
            the config flags it was given (``--config-path``, ``--config-dir``,
            ``--config-name``); no overrides, no ``-m``.
        config_name: The app's primary config (``hydra.job.config_name``).
        config_dir: Where that config lives (``file:///abs/conf``, ``pkg://module``), or None.
        groups: The app's config groups (``model``, ``model/net``, ...), Hydra's own left out.
    """

    argv: tuple[str, ...]
    config_name: str
    config_dir: str | None = None
    groups: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The value of the study attr :data:`hpo.attrs.APP`."""
        return {"argv": list(self.argv), "config_name": self.config_name,
                "config_dir": self.config_dir, "groups": list(self.groups)}

    @classmethod
    def from_record(cls, rec: Any) -> App | None:
        """The app of a :meth:`record` value; None when ``rec`` is not one."""
        if not isinstance(rec, Mapping) or not isinstance(rec.get("config_name"), str):
            return None
        argv = rec.get("argv")
        if not isinstance(argv, list) or not argv:
            return None
        return cls(argv=tuple(str(a) for a in argv), config_name=rec["config_name"],
                   config_dir=rec.get("config_dir") or None,
                   groups=tuple(str(g) for g in rec.get("groups") or ()))

    @classmethod
    def hpo_train(cls) -> App:
        """``python -m hpo.train`` with hpo's own configs: the app of studies with no record."""
        from hpo.paths import config_dir

        root = Path(config_dir())
        groups = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "hydra"
                        and not p.name.startswith(("_", ".")))
        return cls(argv=("python", "-m", "hpo.train"), config_name="train",
                   config_dir=f"file://{root}", groups=tuple(groups))

    @property
    def command(self) -> str:
        """The app's command line, shell-quoted (overrides go after it)."""
        return shlex.join(self.argv)

    def config_flag(self, flag: str) -> str | None:
        """The value of ``--config-path``/``--config-dir``/``--config-name`` in :attr:`argv`."""
        for i, tok in enumerate(self.argv):
            if tok == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
        return None


def app_of(config: Any, argv: Sequence[str] | None = None) -> App:
    """The app of the running sweep: its program and config flags from ``argv`` (default
    ``sys.orig_argv``, the interpreter's own command line), the rest from ``config``.

    Args:
        config: The sweep's composed config with its ``hydra`` node (the sweeper's
            ``self.config``).
        argv: The command line, interpreter first; for tests.
    """
    from omegaconf import OmegaConf

    program, rest = _program(list(sys.orig_argv if argv is None else argv))
    flags: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        name, eq, value = tok.partition("=")
        if name in _CONFIG_FLAGS and eq:
            flags += [_CONFIG_FLAGS[name], value]
        elif tok in _CONFIG_FLAGS and i + 1 < len(rest):
            flags += [_CONFIG_FLAGS[tok], rest[i + 1]]
            i += 1
        i += 1
    job = OmegaConf.select(config, "hydra.job.config_name", default=None)
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    groups = sorted(str(k) for k in choices if not str(k).startswith("hydra/"))
    config_dir = None
    for src in OmegaConf.select(config, "hydra.runtime.config_sources", default=None) or []:
        if src.get("provider") == "main" and src.get("path"):
            config_dir = f"{src.get('schema', 'file')}://{src.get('path')}"
    return App(argv=(*program, *flags), config_name=str(job or "config"),
               config_dir=config_dir, groups=tuple(groups))


def _program(orig: list[str]) -> tuple[list[str], list[str]]:
    """``(program, the rest)`` of an interpreter command line: ``python -m pkg.mod``,
    ``python path/app.py``, or a console script by its name (``hpo-train``)."""
    i = 1
    while i < len(orig):
        tok = orig[i]
        if tok == "-m" and i + 1 < len(orig):
            return ["python", "-m", orig[i + 1]], orig[i + 2:]
        if tok in ("-X", "-W", "-c"):
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        if tok.endswith(".py"):
            return ["python", tok], orig[i + 1:]
        return [os.path.basename(tok)], orig[i + 1:]
    return list(App.hpo_train().argv), []


def study_app(study: optuna.Study) -> tuple[App, bool]:
    """The app recorded in ``study`` (and True), else ``python -m hpo.train`` (and False)."""
    app = App.from_record(study.user_attrs.get(attrs.APP))
    return (app, True) if app is not None else (App.hpo_train(), False)


# ---------------------------------------------------------------------------- best trials


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best complete trial (one objective) or the Pareto front, best first on the first
    objective; empty when no trial is complete."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values]
    if not complete:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def trial_overrides(trial: FrozenTrial) -> list[str] | None:
    """The Hydra overrides the trial's job ran with (stored at launch); None when unknown."""
    return attrs.launch_overrides(trial.user_attrs)


def rerun_command(app: App, trial: FrozenTrial) -> str | None:
    """The command line that reruns ``trial`` as a single run; None without its overrides."""
    overrides = trial_overrides(trial)
    if overrides is None:
        return None
    return shlex.join([*app.argv, *overrides])


def objective_names(study: optuna.Study) -> list[str]:
    """The study's metric names (``study.set_metric_names``), else ``value`` / ``value_<i>``."""
    names = study.metric_names
    if names and len(names) == len(study.directions):
        return list(names)
    return ["value"] if len(study.directions) == 1 else [
        f"value_{i}" for i in range(len(study.directions))]


def _direction(d: StudyDirection) -> str:
    return "maximize" if d == StudyDirection.MAXIMIZE else "minimize"


def results(study: optuna.Study, storage_url: str | None = None) -> dict[str, Any] | None:
    """The content of ``optimization_results.yaml`` for ``study``; None when no trial is
    complete.

    Args:
        study: The study.
        storage_url: Its storage URL, shown with the password hidden; None leaves it out.
    """
    best = best_trials(study)
    if not best:
        return None
    app, _ = study_app(study)
    names = objective_names(study)
    out: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
    if storage_url:
        out["storage"] = redact_url(storage_url)
    if len(study.directions) == 1:
        (t,) = best
        out.update({
            "direction": _direction(study.directions[0]), "objective": names[0],
            "best_params": dict(t.params), "best_value": float(t.values[0]),
            "best_trial_number": t.number, "command": rerun_command(app, t),
        })
        return out
    out.update({
        "directions": [_direction(d) for d in study.directions], "objectives": names,
        "best_trials": [{"number": t.number, "values": [float(v) for v in t.values],
                         "params": dict(t.params), "command": rerun_command(app, t)}
                        for t in best],
        "solutions": [{"params": dict(t.params), "values": [float(v) for v in t.values]}
                      for t in best],
    })
    return out


def write_results(study: optuna.Study, sweep_dir: str | Path, *, app: App | None = None,
                  storage_url: str | None = None) -> Path | None:
    """Write ``<sweep_dir>/optimization_results.yaml``; record ``app`` in the study first.

    The sweeper calls this at the end of every sweep (also one that stopped early), so that
    scripts written for hydra-optuna-sweeper find the file, and ``python -m hpo.best`` knows
    the app's command. The file is replaced atomically.

    Args:
        study: The sweep's study.
        sweep_dir: ``hydra.sweep.dir``.
        app: How the sweep's app was started (:func:`app_of`); stored as the study attr
            ``hpo:app`` when it differs from the one stored.
        storage_url: The storage URL to show in the file (password hidden).

    Returns:
        The file written; None when the study has no complete trial yet (nothing written).
    """
    if app is not None and study.user_attrs.get(attrs.APP) != app.record():
        study.set_user_attr(attrs.APP, app.record())
    content = results(study, storage_url)
    path = Path(sweep_dir) / RESULTS_FILE
    if content is None:
        log.info("no complete trial yet: no %s written", RESULTS_FILE)
        return None
    _atomic_write(path, "# The best trial(s) of the sweep, written by hpo at its end; "
                        "python -m hpo.best prints the same and exports a config.\n"
                        + yaml.safe_dump(content, sort_keys=False, width=99))
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Export:
    """A config written by :func:`export_config`: its path and the command that runs it."""

    path: Path
    command: str


def export_config(app: App, trial: FrozenTrial, path: str | Path, *,
                  study_name: str = "") -> Export:
    """Write a primary config that reruns ``trial``: the app's config, the trial's group
    choices as ``override`` entries, its values under ``_self_``.

    Args:
        app: The sweep's app.
        trial: The trial (its overrides are read from ``hpo:launch``).
        path: The ``.yaml`` file to write (its folder is created).
        study_name: Shown in the file's header.

    Raises:
        ConfigError: The trial has no stored overrides, an override cannot be written as a
            config, or the file's name or folder does not fit the app (one line each).
    """
    overrides = trial_overrides(trial)
    if overrides is None:
        raise ConfigError(
            f"trial {trial.number} has no stored overrides (hpo:launch): it was not run by the "
            "hpo sweeper, so there is no command to export"
        )
    target = Path(path).expanduser().resolve()
    if target.suffix != ".yaml":
        raise ConfigError(f"--export {path}: name the file <name>.yaml, e.g. best.yaml")
    name = target.stem
    if name == app.config_name:
        raise ConfigError(
            f"--export {path} is named like the app's config {app.config_name!r}, which it "
            "extends: choose another name, e.g. best.yaml"
        )
    if app.config_dir and app.config_dir.startswith("file://") and (
            Path(app.config_dir[len("file://"):]) / f"{name}.yaml").exists():
        raise ConfigError(
            f"--export {path}: the app already has a config {name!r}, which would be loaded "
            "instead: choose another name"
        )
    argv = list(app.argv)
    config_dir = app.config_flag("--config-dir")
    if config_dir is not None and Path(config_dir).resolve() != target.parent:
        raise ConfigError(
            f"the sweep ran with --config-dir {config_dir}, and Hydra takes one: export into "
            f"that folder (--export {Path(config_dir) / target.name})"
        )
    argv = _without_flag(argv, "--config-name")
    if config_dir is None:
        argv += ["--config-dir", str(target.parent)]
    argv += ["--config-name", name]
    command = shlex.join(argv)
    body = _config_text(app, overrides, trial, study_name, command)
    try:
        _atomic_write(target, body)
    except OSError as exc:
        raise ConfigError(
            f"cannot write --export {path}: {exc.strerror or first_line(exc)} "
            "(choose a folder you can write)"
        ) from exc
    return Export(path=target, command=command)


def _without_flag(argv: list[str], flag: str) -> list[str]:
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == flag:
            skip = True
            continue
        out.append(tok)
    return out


def _config_text(app: App, overrides: Sequence[str], trial: FrozenTrial, study_name: str,
                 command: str) -> str:
    """The exported config: ``defaults`` (the app's config, added groups, group overrides,
    ``_self_``) and the values, from the trial's ``overrides``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(
            f"trial {trial.number}'s overrides do not parse ({first_line(exc)}): export the "
            "command line instead"
        ) from exc
    groups = set(app.groups)
    added: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []
    body = OmegaConf.create({})
    for o in parsed:
        if o.is_delete():
            raise ConfigError(
                f"trial {trial.number} deletes {o.key_or_group} (~): a config cannot say that; "
                "rerun it with its command line"
            )
        value = o.value()
        if o.key_or_group in groups:
            key = o.key_or_group + (f"@{o.package}" if o.package else "")
            if o.is_add() or o.is_force_add():
                added.append({f"/{key}": value})
            else:
                replaced.append({f"override /{key}": value})
            continue
        key = o.key_or_group if not o.package else f"{o.package}.{o.key_or_group}"
        OmegaConf.update(body, key, value, merge=False, force_add=True)
    doc: dict[str, Any] = {"defaults": [app.config_name, *added, *replaced, "_self_"]}
    doc.update(OmegaConf.to_container(body, resolve=False))  # type: ignore[arg-type]
    values = ", ".join(f"{v:.6g}" for v in trial.values or ())
    header = (f"# Trial {trial.number} of study {study_name!r}"
              + (f" ({values})" if values else "") + ", exported by python -m hpo.best.\n"
              f"# Rerun it:\n#   {command}\n# Overrides on that command line still apply, "
              "e.g. trainer.max_epochs=50.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=99)


# ---------------------------------------------------------------------------- CLI


def _describe(study: optuna.Study, t: FrozenTrial, app: App, names: list[str]) -> list[str]:
    values = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, t.values, strict=True))
    lines = [f"trial {t.number}: {values}"]
    lines += [f"  {k} = {v!r}" for k, v in t.params.items()]
    command = rerun_command(app, t)
    lines.append(f"  rerun: {command}" if command else
                 "  rerun: unknown (the trial was not run by the hpo sweeper)")
    return lines


def _pick(study: optuna.Study, number: int | None) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            raise ConfigError(
                f"--trial {number}: study {study.study_name!r} has trials 0..{len(trials) - 1}"
                if trials else f"--trial {number}: study {study.study_name!r} has no trial")
        if match[0].state != TrialState.COMPLETE:
            raise ConfigError(f"--trial {number} is {match[0].state.name.lower()}, not "
                              "complete: choose a complete trial")
        return match
    best = best_trials(study)
    if not best:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        held = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trial"
        raise ConfigError(
            f"study {study.study_name!r} has no complete trial yet ({held}): run the sweep "
            "further, or wait for a trial to finish"
        )
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpo.best``: print a study's best trial(s), optionally export a config."""
    parser = argparse.ArgumentParser(
        prog="python -m hpo.best",
        description="Print a study's best trial (the Pareto front for several objectives) "
                    "with the command that reruns it; --export writes a config that reruns "
                    "it with one command.",
    )
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"storage URL (default: {DEFAULT_STORAGE})")
    parser.add_argument("--study", default=None,
                        help="study name (default: the storage's only or latest study)")
    parser.add_argument("--trial", type=int, default=None,
                        help="a trial number instead of the best")
    parser.add_argument("--export", default=None, metavar="FILE",
                        help="write a config that reruns the trial (e.g. best.yaml); with "
                             "several Pareto-optimal trials one file each, FILE_trial<N>.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.export and Path(args.export).suffix != ".yaml":
            raise ConfigError(f"--export {args.export}: name the file <name>.yaml, e.g. "
                              "best.yaml")
        study = load_existing_study(open_existing(args.storage), args.storage, args.study,
                                    latest=True)
        chosen = _pick(study, args.trial)
        app, recorded = study_app(study)
        names = objective_names(study)
        dirs = ", ".join(f"{_direction(d)} {n}" for d, n in zip(study.directions, names,
                                                                 strict=True))
        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        what = ("trial" if args.trial is not None else
                "best trial" if len(study.directions) == 1 else
                f"Pareto front ({len(chosen)} trials)")
        lines = [f"study {study.study_name!r} ({redact_url(args.storage)}): {what} of "
                 f"{n_complete} complete ({dirs})"]
        for t in chosen:
            lines += _describe(study, t, app, names)
        if not recorded:
            lines.append("  (the study does not record its app: assumed python -m hpo.train)")
        exports: list[Export] = []
        if args.export:
            base = Path(args.export)
            for t in chosen:
                path = (base if len(chosen) == 1 else
                        base.with_name(f"{base.stem}_trial{t.number}{base.suffix}"))
                exports.append(export_config(app, t, path, study_name=study.study_name))
    except (HPOError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    for e in exports:
        print(f"wrote {e.path}; rerun with:\n  {e.command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
