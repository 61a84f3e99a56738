"""Dry run: the planned trials (on SLURM also the sbatch script); nothing submitted or stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from hpo.space import ParamSpec
from hpo.storage import open_storage

if TYPE_CHECKING:
    from ._grammar import ParsedParam
    from ._impl import HPOSweeperImpl

log = logging.getLogger(__name__)


def describe_plan(
    sweeper: HPOSweeperImpl,
    specs: list[ParamSpec],
    searched: list[ParsedParam],
    fixed: list[str],
    objective_names: list[str],
) -> list[list[str]]:
    """Print the first batch of trials a real run would start; return their overrides."""
    # read the existing study (if any) into memory; the real storage is only read
    memory = optuna.storages.InMemoryStorage()
    url = sweeper._storage_url()
    done = 0
    db = url[len("sqlite:///"):] if url and url.startswith("sqlite:///") else None
    if url and url != "memory" and (db is None or Path(db).exists()):
        try:
            real = open_storage(url)
            existing = optuna.load_study(study_name=sweeper.study_name, storage=real)
            trials = existing.get_trials(deepcopy=True)
            done = len(trials)
        except Exception:
            trials = []
    else:
        trials = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=memory, directions=sweeper.directions,
                                sampler=sweeper._build_fallback())
    study.add_trials([t for t in trials if t.state.is_finished()])
    n = max(0, min(sweeper.n_jobs, sweeper.n_trials - done))
    from omegaconf import OmegaConf

    llm = sweeper.sampler_cfg is None and sweeper.config is not None and (
        OmegaConf.select(sweeper.config, "agent", default=None) is not None
    )
    baseline = {s.name: s.default for s in specs if s.default is not None} if llm else {}
    plans: list[list[str]] = []
    for i in range(n):
        if done == 0 and i == 0 and baseline and len(baseline) == len(specs):
            study.enqueue_trial(baseline)
        t = study.ask({s.name: s.distribution for s in specs})
        plans.append(sweeper._trial_overrides(t.params, searched, fixed))
    lines = [
        f"DRY RUN: study {sweeper.study_name!r} holds {done} trial(s) of n_trials="
        f"{sweeper.n_trials}; the first {n} trial(s) would be"
        + (" (LLM proposals are not requested in a dry run; trial 0 is the config defaults):"
           if llm else ":"),
        *(f"  trial {done + i}: {' '.join(p)}" for i, p in enumerate(plans)),
    ]
    script = _sbatch_script(sweeper, plans[0] if plans else [])
    if script:
        lines += ["sbatch script that would be submitted for the first trial:", script]
    lines.append("nothing was submitted and nothing was written to storage.")
    print("\n".join(lines), flush=True)
    return plans


def _sbatch_script(sweeper: HPOSweeperImpl, overrides: list[str]) -> str | None:
    launcher = sweeper.launcher
    if launcher is None or getattr(launcher, "_EXECUTOR", None) != "slurm":
        return None
    from hydra_plugins.hpo_sweeper._slurm import sbatch_preview

    params: dict[str, Any] = dict(getattr(launcher, "params", {}))
    return sbatch_preview(params, overrides)
