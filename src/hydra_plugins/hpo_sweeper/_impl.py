"""The work of the ``hpo`` sweeper, in order: plan, check, open the study, recover, loop.

Each step is a module of its own, and values flow between them:

- :mod:`._plan`: ``hydra.sweeper.*`` + config + command line -> a frozen ``SweepPlan``;
- :mod:`._study`: the sampler and pruner, the study opened in storage, the jobs' context;
- :mod:`._recovery`: RUNNING trials of dead drivers failed and re-enqueued;
- :mod:`._loop`: the slot loop; :mod:`._jobs`: the launcher (and :mod:`._inprocess`);
- :mod:`._dryrun`: the plan printed instead of run.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hpo.errors import ConfigError, SearchSpaceError, first_line

from ._jobs import JobRunner, launcher_facts
from ._loop import SlotLoop
from ._plan import SweepPlan, build_plan
from ._recovery import driver_id, recover_orphans
from ._study import (
    build_pruner,
    build_sampler,
    check_sweep_dir,
    export_job_context,
    open_study,
    register_driver,
)
from .config import HPOSweeperConf


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
        for values in plan.validation_points():
            self._check_composition(plan.trial_overrides(values))
        return plan

    def sweep(self, arguments: list[str]) -> Any:
        assert self.launcher is not None
        plan = self.plan(arguments)
        if plan.dry_run:
            from ._dryrun import describe

            return describe(plan)
        # everything that can fail on bad input comes before the storage is opened
        pruner = build_pruner(plan.pruner)
        sampler = build_sampler(plan)
        check_sweep_dir(plan)
        study = open_study(plan, sampler, pruner)
        export_job_context(plan, study, pruner)
        me = driver_id()
        recover_orphans(study, grace_s=plan.heartbeat_grace_s,
                        max_retries=plan.budget.max_retries)
        register_driver(study, me, plan)
        runner = JobRunner(self.launcher, plan.launcher)
        return SlotLoop(plan, study, sampler, runner.launch, driver=me).run()

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

