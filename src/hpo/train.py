"""``python -m hpo.train``: one training run, or (``-m``) an LLM-guided sweep of them.

The task function runs the configured task once and returns the objective metric(s) named by
``objective``, which the ``hpo`` sweeper tells Optuna: by default the Lightning runner
(:func:`hpo.tasks.lightning.run`: data, model and optimizer from the config, trained and
measured on the best checkpoint), or the function named by ``task._target_`` (e.g. the
external-command task, ``hpo.tasks.command.run``).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hpo.hydra_errors import reported_by_hydra
from hpo.paths import config_dir

__all__ = ["config_dir", "main", "train"]


def train(cfg: DictConfig) -> float | list[float]:
    """Run the configured task once; return the objective value(s).

    ``task._target_`` (a function of the whole config) replaces the built-in Lightning
    classification task, e.g. the external-command task.
    """
    task = cfg.get("task")
    if task and task.get("_target_"):
        from hydra.utils import get_method

        result: float | list[float] = get_method(str(task._target_))(cfg)
        return result
    from hpo.tasks.lightning import run

    return run(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | list[float]:
    """Entry point of ``python -m hpo.train``: an ``HPOError`` ends a single run with one line."""
    with reported_by_hydra(job=True):
        return train(cfg)


if __name__ == "__main__":
    # Run the function of the importable module, not of __main__: launchers that pickle the
    # task (submitit) then pickle a reference to hpo.train.main instead of its code.
    from hpo.train import main as _main

    _main()
