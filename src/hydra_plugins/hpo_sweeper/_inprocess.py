"""In-process jobs without composing the whole config again for every trial.

Hydra's basic launcher composes each job's config from scratch: the defaults list, every
config file, then the overrides (~55 ms of a ~70 ms trial cycle for a no-op app). A sweep's
trials differ mostly in leaf values (``optimizer.lr=0.003``). So the config is composed once
per set of *structural* overrides (config-group choices, ``+``/``++``/``~`` keys, ``hydra.*``),
cached, and each trial gets a copy with its leaf values set, validated by OmegaConf's struct
and type checks exactly as composition would. Anything this cannot apply falls back to Hydra's
full composition, so the result never differs; ``hydra.sweeper.fast_inprocess=false`` turns
the fast path off.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import OrderedDict
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

ENV_SET = "hydra.job.env_set."
_CACHE_SIZE = 32


class InProcessJobs:
    """Runs jobs in this process like Hydra's BasicLauncher, composing once per structure."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.parser = OverridesParser.create()
        self._bases: OrderedDict[tuple[str, ...], DictConfig] = OrderedDict()
        self.fast = 0
        self.full = 0

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        launcher: Any = self.launcher
        config, ctx = launcher.config, launcher.hydra_context
        setup_globals()
        out = []
        for i, job in enumerate(jobs):
            idx = initial_job_idx + i
            cfg = self._job_config(config, job)
            with open_dict(cfg):
                cfg.hydra.job.id = idx
                cfg.hydra.job.num = idx
            out.append(run_job(
                hydra_context=ctx, task_function=launcher.task_function, config=cfg,
                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
            ))
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        return out

    def _job_config(self, config: DictConfig, job: list[str]) -> DictConfig:
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
                structural.append(o.input_line)
            else:
                leaves.append(o)
        base = self._base(config, tuple(structural))
        cfg = copy.deepcopy(base)
        try:
            with read_write(cfg):  # struct stays on: an unknown key fails as in composition
                for o in leaves:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception:  # anything composition would judge differently: let Hydra do it
            self.full += 1
            return self._compose(config, job)
        task = [o for o in parsed if not o.is_hydra_override()
                and not o.key_or_group.startswith(ENV_SET)]
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            od = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = _overrides_dirname(
                task, list(od.exclude_keys), od.item_sep, od.kv_sep
            )
            for k, v in env.items():
                cfg.hydra.job.env_set[k] = v
            overrides_hydra = list(cfg.hydra.overrides.hydra)
            cfg.hydra.overrides.hydra = overrides_hydra + [
                o.input_line for o in parsed if o.key_or_group.startswith(ENV_SET)
            ]
        self.fast += 1
        return cfg

    def _base(self, config: DictConfig, structural: tuple[str, ...]) -> DictConfig:
        base = self._bases.get(structural)
        if base is None:
            base = self._compose(config, list(structural))
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


def _overrides_dirname(
    overrides: list[Override], exclude_keys: list[str], item_sep: str, kv_sep: str
) -> str:
    # the same rule as Hydra's own (hydra.job.override_dirname)
    lines = sorted(
        o.input_line for o in overrides
        if o.key_or_group not in exclude_keys and o.input_line is not None
    )
    return re.sub("[=]", kv_sep, item_sep.join(lines))
