"""The ``hpo`` Hydra sweeper: an Optuna 5 study driven by an LLM agent chain.

This facade is imported at every Hydra start, so it stays light: the work is in ``_impl``. It is
the sweeper's Hydra entry point: an ``HPOError`` raised below ends the run as one line.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hpo.hydra_errors import reported_by_hydra

from .config import HPOSweeperConf  # noqa: F401  (registers hydra/sweeper=hpo)


class HPOSweeper(Sweeper):
    """Hydra sweeper that asks an Optuna study (LLMSampler by default) for every trial."""

    def __init__(self, **kwargs: Any) -> None:
        from ._impl import HPOSweeperImpl

        with reported_by_hydra():
            self.sweeper = HPOSweeperImpl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        with reported_by_hydra():
            self.sweeper.setup(
                hydra_context=hydra_context, task_function=task_function, config=config
            )

    def sweep(self, arguments: list[str]) -> Any:
        with reported_by_hydra():
            return self.sweeper.sweep(arguments)
