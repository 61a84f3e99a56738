"""In-process jobs without composing the whole config again for every trial.

Hydra's basic launcher composes each job's config from scratch: the defaults list, every
config file, then the overrides (~55 ms of a ~70 ms trial cycle for a no-op app). A sweep's
trials differ mostly in leaf values (``optimizer.lr=0.003``). So the config is composed once
per set of *structural* overrides (config-group choices, ``+``/``++``/``~`` keys, ``hydra.*``),
cached, and each trial gets a copy with its leaf values set, validated by OmegaConf's struct
and type checks exactly as composition would. Anything this cannot apply falls back to Hydra's
full composition, so the result never differs; ``hydra.sweeper.fast_inprocess=false`` turns
the fast path off.

The job then runs as Hydra 1.3's ``run_job`` runs it (same output dir, ``.hydra/*.yaml``
files, callbacks, environment, working directory, job logging), minus what only costs here:
``run_job`` copies the ``hydra`` node four times (twice for ``HydraConfig``, once in the
task's copy of the whole config, once for the job's return), where this job's config is a
private copy already (the task's part comes from a copy cached per structure); and the logging
is rebuilt from scratch twice per job (the job's config, then Hydra's own back), where
:class:`_Logging` switches between the handler sets each config built once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    env_override,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, flag_override, open_dict, read_write

log = logging.getLogger(__name__)

ENV_SET = "hydra.job.env_set."
_CACHE_SIZE = 32


@dataclass
class _Base:
    """A composed config for one set of structural overrides, and its task part."""

    config: DictConfig  # with the hydra node
    task: DictConfig  # without it, as run_job hands it to the task


class InProcessJobs:
    """Runs jobs in this process like Hydra's BasicLauncher, composing once per structure."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.parser = OverridesParser.create()
        self._bases: OrderedDict[tuple[str, ...], _Base] = OrderedDict()
        self._logging = _Logging()
        self.fast = 0
        self.full = 0

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        launcher: Any = self.launcher
        config, ctx = launcher.config, launcher.hydra_context
        setup_globals()
        out = []
        for i, job in enumerate(jobs):
            idx = initial_job_idx + i
            cfg, task = self._job_config(config, job)
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            out.append(self._run_job(ctx, launcher.task_function, cfg, task))
        self._logging.apply(config.hydra.hydra_logging, config.hydra.verbose)
        return out

    # ---------------------------------------------------------------- the job's config
    def _job_config(self, config: DictConfig, job: list[str]) -> tuple[DictConfig, DictConfig]:
        """The job's config and its task part (the config without ``hydra``)."""
        parsed = self.parser.parse_overrides(job)
        groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
        structural: list[str] = []
        leaves: list[Override] = []
        env: dict[str, Any] = {}
        for o in parsed:
            key = o.key_or_group
            if key.startswith(ENV_SET) and o.is_force_add():
                env[key[len(ENV_SET):]] = o.value()
            elif (o.is_sweep_override() or o.is_add() or o.is_force_add() or o.is_delete()
                  or o.package is not None or key in groups or o.is_hydra_override()):
                structural.append(str(o.input_line))
            else:
                leaves.append(o)
        base = self._base(config, tuple(structural))
        cfg, task = copy.deepcopy(base.config), copy.deepcopy(base.task)
        try:
            for node in (cfg, task):
                with read_write(node):  # struct stays on: an unknown key fails as in composition
                    for o in leaves:
                        OmegaConf.update(node, o.key_or_group, o.value(), merge=True)
        except Exception:  # anything composition would judge differently: let Hydra do it
            self.full += 1
            cfg = self._compose(config, job)
            return cfg, _task_part(cfg)
        task_overrides = [o for o in parsed if not o.is_hydra_override()
                          and not o.key_or_group.startswith(ENV_SET)]
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task_overrides]
            od = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = _overrides_dirname(
                task_overrides, list(od.exclude_keys), od.item_sep, od.kv_sep
            )
            for k, v in env.items():
                cfg.hydra.job.env_set[k] = v
            # the strings as written: an override such as hydra.sweep.subdir=t_${hydra.job.num}
            # is not resolved here (the job number is set later)
            overrides_hydra = OmegaConf.to_container(cfg.hydra.overrides.hydra, resolve=False)
            assert isinstance(overrides_hydra, list)
            cfg.hydra.overrides.hydra = overrides_hydra + [
                o.input_line for o in parsed if o.key_or_group.startswith(ENV_SET)
            ]
        self.fast += 1
        return cfg, task

    def _base(self, config: DictConfig, structural: tuple[str, ...]) -> _Base:
        base = self._bases.get(structural)
        if base is None:
            composed = self._compose(config, list(structural))
            base = _Base(composed, _task_part(composed))
            self._bases[structural] = base
            if len(self._bases) > _CACHE_SIZE:
                self._bases.popitem(last=False)
        else:
            self._bases.move_to_end(structural)
        return base

    def _compose(self, config: DictConfig, overrides: list[str]) -> DictConfig:
        launcher: Any = self.launcher
        loader = launcher.hydra_context.config_loader
        return loader.load_sweep_config(config, list(overrides))

    # ---------------------------------------------------------------- running it
    def _run_job(
        self, ctx: HydraContext, task_function: TaskFunction, cfg: DictConfig,
        task_cfg: DictConfig,
    ) -> JobReturn:
        """Hydra 1.3's ``run_job`` for a config this job owns (see the module docstring)."""
        hydra_config = HydraConfig.instance()
        old_cwd = os.getcwd()
        orig_hydra_cfg = hydra_config.cfg
        view: Any = _hydra_view(cfg)
        hydra_config.cfg = view
        output_dir = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                  str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):  # the view's too
            cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
        chdir = None
        try:
            ret = JobReturn()
            ret.cfg = task_cfg
            ret.hydra_cfg = view  # this job's own: no copy needed
            overrides = OmegaConf.to_container(cfg.hydra.overrides.task)
            assert isinstance(overrides, list)
            ret.overrides = overrides
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            chdir = view.hydra.job.chdir
            if chdir is None:  # hpo's apps use version_base >= 1.2, where the default is False
                from hydra import version

                chdir = not version.base_at_least("1.2")
            if chdir:
                os.chdir(output_dir)
                ret.working_dir = output_dir
            else:
                ret.working_dir = os.getcwd()
            self._logging.apply(cfg.hydra.job_logging, cfg.hydra.verbose)
            if cfg.hydra.output_subdir is not None:
                hydra_output = Path(cfg.hydra.runtime.output_dir) / Path(cfg.hydra.output_subdir)
                _save_config(task_cfg, "config.yaml", hydra_output)
                _save_config(view, "hydra.yaml", hydra_output)
                _save_config(cfg.hydra.overrides.task, "overrides.yaml", hydra_output)
            with env_override(view.hydra.job.env_set):
                ctx.callbacks.on_job_start(config=cfg, task_function=task_function)
                try:
                    ret.return_value = task_function(task_cfg)
                    ret.status = JobStatus.COMPLETED
                except Exception as e:
                    ret.return_value = e
                    ret.status = JobStatus.FAILED
            ret.task_name = JobRuntime.instance().get("name")
            _flush_handlers()
            ctx.callbacks.on_job_end(config=cfg, job_return=ret)
            return ret
        finally:
            hydra_config.cfg = orig_hydra_cfg
            if chdir:
                os.chdir(old_cwd)


def _hydra_view(cfg: DictConfig) -> DictConfig:
    """What ``HydraConfig.set_config(cfg)`` makes ``HydraConfig.cfg``: ``{hydra: cfg.hydra}``,
    read-only, its parent ``cfg`` (interpolations from the hydra node reach the app's keys),
    sharing cfg's hydra node where Hydra copies it (this job owns ``cfg``)."""
    node = cfg._get_node("hydra")
    assert isinstance(node, DictConfig) and issubclass(
        OmegaConf.get_type(node) or object, HydraConf)
    OmegaConf.set_readonly(node, True)
    view = OmegaConf.create()
    with flag_override(view, "no_deepcopy_set_nodes", True):
        view["hydra"] = node
    node._set_parent(cfg)
    return view


def _task_part(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its ``hydra`` node, as ``run_job`` hands it to the task."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _save_config(cfg: DictConfig, filename: str, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(OmegaConf.to_yaml(cfg))


def _flush_handlers() -> None:
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            with contextlib.suppress(Exception):  # as Hydra: never fail a job over a flush
                handler.flush()


def _overrides_dirname(
    overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    # the same rule as Hydra's own (hydra.job.override_dirname)
    lines = sorted(
        o.input_line for o in overrides
        if o.key_or_group not in exclude_keys and o.input_line is not None
    )
    return re.sub("[=]", kv_sep, item_sep.join(lines))


# -------------------------------------------------------------------- logging
@dataclass
class _Snapshot:
    """The loggers and handlers one logging config built (after Hydra's ``configure_log``)."""

    root: tuple[int, list[logging.Handler]]
    loggers: dict[str, tuple[int, list[logging.Handler], bool, bool]]
    files: dict[str, logging.FileHandler]  # config handler name -> its file handler

    @classmethod
    def take(cls, conf: dict[str, Any]) -> _Snapshot | None:
        """What ``conf`` just built; None when its file handlers cannot all be found."""
        root = logging.getLogger()
        loggers = {}
        for name in conf.get("loggers") or {}:
            lg = logging.getLogger(name)
            loggers[name] = (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        everyone = [*root.handlers, *(h for v in loggers.values() for h in v[1])]
        files = {}
        for name, filename in _file_names(conf).items():
            path = os.path.abspath(filename)
            found = [h for h in everyone
                     if isinstance(h, logging.FileHandler) and h.baseFilename == path]
            if len(found) != 1:
                return None
            files[name] = found[0]
        return cls((root.level, list(root.handlers)), loggers, files)

    def restore(self, file_names: dict[str, str]) -> None:
        root = logging.getLogger()
        for handler in root.handlers:
            handler.flush()
        root.setLevel(self.root[0])
        root.handlers = list(self.root[1])
        for name, (level, handlers, propagate, disabled) in self.loggers.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers = list(handlers)
            lg.propagate = propagate
            lg.disabled = disabled
        for name, handler in self.files.items():
            path = os.path.abspath(file_names[name])
            if handler.baseFilename != path or handler.stream is None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                stream: Any = open(path, handler.mode, encoding=handler.encoding,  # noqa: SIM115
                              errors=handler.errors)  # the handler owns it from here
                old = handler.setStream(stream)
                if old is not None:
                    old.close()
                handler.baseFilename = path


class _Logging:
    """Hydra's ``configure_log``, once per logging config; then a switch between handler sets.

    A config equal to one applied before, but for the file names of its file handlers, gets
    the loggers and handlers that config built, its files reopened on the new names. Configs
    that ``dictConfig`` would treat otherwise (incremental, disabling existing loggers, handler
    classes other than plain stream and file handlers, ``hydra.verbose``) always go through
    ``configure_log``.
    """

    def __init__(self) -> None:
        self._snapshots: dict[str, _Snapshot] = {}
        self._current: str | None = None

    def apply(self, log_config: DictConfig | None, verbose: Any) -> None:
        raw = OmegaConf.to_container(log_config, resolve=True) if log_config is not None else None
        conf = {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else None
        if conf is None or verbose is not False or not _switchable(conf):
            configure_log(log_config, verbose)  # type: ignore[arg-type]
            self._current = None
            return
        key = _fingerprint(conf)
        snap = self._snapshots.get(key)
        if snap is None:
            configure_log(log_config, verbose)  # type: ignore[arg-type]
            taken = _Snapshot.take(conf)
            if taken is not None:
                self._snapshots[key] = taken
        elif key != self._current or snap.files:
            snap.restore(_file_names(conf))
        self._current = key


def _switchable(conf: dict[str, Any]) -> bool:
    if conf.get("incremental") or conf.get("disable_existing_loggers", True) is not False:
        return False
    if conf.get("filters") or not isinstance(conf.get("root"), dict):
        return False
    for handler in (conf.get("handlers") or {}).values():
        cls = handler.get("class") if isinstance(handler, dict) else None
        if cls not in ("logging.StreamHandler", "logging.FileHandler") or handler.get("delay"):
            return False
    return True


def _file_names(conf: dict[str, Any]) -> dict[str, str]:
    return {name: str(h["filename"]) for name, h in (conf.get("handlers") or {}).items()
            if h.get("class") == "logging.FileHandler"}


def _fingerprint(conf: dict[str, Any]) -> str:
    handlers = {name: {k: v for k, v in h.items() if k != "filename"}
                for name, h in (conf.get("handlers") or {}).items()}
    return json.dumps({**conf, "handlers": handlers}, sort_keys=True, default=str)
