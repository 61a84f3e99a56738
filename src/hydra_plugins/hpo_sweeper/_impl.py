"""The work of the ``hpo`` sweeper, in order: plan, check, open the study, recover, loop.

Each step is a module of its own, and values flow between them:

- :mod:`._plan`: ``hydra.sweeper.*`` + config + command line -> a frozen ``SweepPlan``;
- :mod:`._study`: the sampler and pruner, the study opened in storage, the jobs' context;
- :mod:`._recovery`: RUNNING trials of dead drivers failed and re-enqueued, or re-attached
  when their jobs ended with a result or still run;
- :mod:`._loop`: the slot loop; :mod:`._jobs`: the launcher (:mod:`._submitit`,
  :mod:`._inprocess`); :mod:`._interrupt`: stop signals;
- :mod:`._dryrun`: the plan printed instead of run; :mod:`._detach`: the driver submitted as
  a SLURM job instead of run here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hpo.attrs import driver_id, trial_output_dir
from hpo.errors import ConfigError, SearchSpaceError, first_line

from ._detach import ENV_DRIVER_JOB
from ._interrupt import Guard, Interrupted, exit_interrupted, interrupt_line
from ._jobs import JobRunner, launcher_facts
from ._loop import SlotLoop
from ._lost_storage import tell_unreported
from ._plan import SweepPlan, build_plan
from ._recovery import recover_orphans
from ._study import (
    build_pruner,
    build_sampler,
    check_sweep_dir,
    export_job_context,
    open_study,
    register_driver,
)
from ._submitit import facts as job_facts
from .config import HPOSweeperConf

log = logging.getLogger(__name__)


class HPOSweeperImpl(Sweeper):
    """See :class:`hydra_plugins.hpo_sweeper.config.HPOSweeperConf` for the options."""

    def __init__(self, **options: Any) -> None:
        # validated in sweep(): an error raised here would reach the user wrapped in Hydra's
        # instantiate message (three lines), not as one line
        self.options = HPOSweeperConf(**options)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def plan(self, arguments: list[str]) -> SweepPlan:
        """The sweep's plan, its trial configs checked by composing them (nothing stored)."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        loader = self.hydra_context.config_loader
        plan = build_plan(
            self.options, arguments, self.config,
            group_options=loader.get_group_options,
            launcher=launcher_facts(self.launcher, fast_inprocess=self.options.fast_inprocess),
        )
        if not plan.study_named:
            self._name_study(plan.study_name)
        for values in plan.validation_points():
            self._check_composition(plan.trial_overrides(values))
        return plan

    def _name_study(self, name: str) -> None:
        """Give the sweep's config, and every job's, the default study name (the sweep dir
        and the jobs may interpolate ``${hydra.sweeper.study_name}``)."""
        from omegaconf import open_dict, read_write

        assert self.config is not None
        with read_write(self.config), open_dict(self.config):
            self.config.hydra.sweeper.study_name = name
            self.config.hydra.overrides.hydra.append(f"hydra.sweeper.study_name={name}")
        log.info("study %r (no hydra.sweeper.study_name: the config name and a hash of the "
                 "search space; set it to name the study yourself)", name)

    def sweep(self, arguments: list[str]) -> Any:
        with Guard() as guard:
            study = None
            loop: SlotLoop | None = None
            try:
                plan = self.plan(arguments)
                if plan.dry_run:
                    from ._dryrun import describe

                    return describe(plan)
                if plan.detach:
                    from ._detach import submit_driver

                    return submit_driver(plan)
                study, loop = self._open(plan, guard)
                return loop.run()
            except Interrupted as exc:
                finished = loop.finished() if loop is not None else None
                in_flight = loop.interrupted_in_flight if loop is not None else 0
                if exc.requeue:
                    from ._detach import requeue_self

                    requeue_self()
                exit_interrupted(interrupt_line(finished, in_flight), exc.exit_code)
        return study  # not reached

    def _open(self, plan: SweepPlan, guard: Guard) -> tuple[optuna.Study, SlotLoop]:
        """Open the study, recover the orphans of earlier drivers, register this driver."""
        assert self.launcher is not None
        # everything that can fail on bad input comes before the storage is opened
        pruner = build_pruner(plan.pruner)
        sampler = build_sampler(plan)
        check_sweep_dir(plan)
        study = open_study(plan, sampler, pruner)
        export_job_context(plan, study, pruner)
        me = driver_id()
        runner = JobRunner(self.launcher, plan)
        with guard.critical():  # trials are judged and their fates written together
            # results an earlier run kept beside its trials when it lost the storage
            tell_unreported(study, lambda n, user: trial_output_dir(n, user, study.user_attrs))
            recovered = recover_orphans(
                study, grace_s=plan.heartbeat_grace_s, max_retries=plan.budget.max_retries,
                lookup=job_facts, slurm_job=os.environ.get(ENV_DRIVER_JOB) or None,
            )
            register_driver(study, me, plan)
        from hpo.best import app_of

        loop = SlotLoop(plan, study, sampler, runner, driver=me, adopt=recovered.adopt,
                        guard=guard, app=app_of(self.config))
        return study, loop

    def _check_composition(self, overrides: list[str]) -> None:
        """Compose the config once with ``overrides``: bad paths/options fail before any trial."""
        try:
            self.validate_batch_is_legal([overrides])
        except Exception as exc:
            msg = str(exc).strip()
            first = first_line(exc)
            if ("Key '" in msg and "not in struct" in msg) or "Could not override" in first:
                bad = first.split("'")[1] if "'" in first else first
                raise SearchSpaceError(
                    f"unknown parameter path {bad!r}: it is not in the config; check the "
                    f"spelling, or write +{bad} to add a new key"
                ) from exc
            if "Could not find" in first:
                options = [
                    ln.strip() for ln in msg.splitlines()[1:] if ln.startswith(("\t", "    "))
                ]
                hint = f": choose from {', '.join(options)}" if options else ""
                raise ConfigError(f"{first.rstrip('.')}{hint}") from exc
            raise ConfigError(f"the sweep's overrides do not compose: {first}") from exc

