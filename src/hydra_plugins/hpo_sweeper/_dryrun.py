"""Dry run: the planned trials (on SLURM also the sbatch script of each resource class);
nothing submitted or stored."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from hpo.storage import open_storage

from ._plan import SweepPlan
from ._study import build_fallback, check_space

log = logging.getLogger(__name__)


def describe(plan: SweepPlan) -> list[list[str]]:
    """Print the first batch of trials a real run would start; return their overrides.

    The study already in storage (if any) is read into memory and the batch is asked there
    with the classical sampler; the real storage is only read.
    """
    trials = _existing_trials(plan)
    check_space(trials, plan)  # the clash a real run would stop on
    done = len(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                directions=plan.study_directions, sampler=build_fallback(plan))
    study.add_trials([t for t in trials if t.state.is_finished()])
    n = max(0, min(plan.slots, plan.budget.n_trials - done))
    llm = plan.sampler.agent is not None
    baseline = {s.name: s.default for s in plan.space if s.default is not None} if llm else {}
    plans: list[list[str]] = []
    asked: list[dict[str, object]] = []
    for i in range(n):
        if done == 0 and i == 0 and baseline and len(baseline) == len(plan.space):
            study.enqueue_trial(baseline)
        t = study.ask(plan.distributions)
        asked.append(dict(t.params))
        plans.append(plan.trial_overrides(t.params))
    lines = [
        f"DRY RUN: study {plan.study_name!r} holds {done} trial(s) of n_trials="
        f"{plan.budget.n_trials}; the first {n} trial(s) would be"
        + (" (LLM proposals are not requested in a dry run; trial 0 is the config defaults):"
           if llm else ":"),
        *(f"  trial {done + i}: {' '.join(p)}" for i, p in enumerate(plans)),
    ]
    if plan.launcher.slurm_params is not None:
        lines += _scripts(plan, asked, plans)
    lines.append("nothing was submitted and nothing was written to storage.")
    print("\n".join(lines), flush=True)
    return plans


def _existing_trials(plan: SweepPlan) -> list[optuna.trial.FrozenTrial]:
    url = plan.storage_url
    if plan.in_memory or url is None:
        return []
    db = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else None
    if db is not None and not Path(db).exists():
        return []  # opening would create the file
    try:
        study = optuna.load_study(study_name=plan.study_name, storage=open_storage(url))
        return study.get_trials(deepcopy=True)
    except Exception:  # no such study yet, or an unreadable storage: plan from scratch
        return []


def _scripts(plan: SweepPlan, params: list[dict[str, object]],
             plans: list[list[str]]) -> list[str]:
    """The sbatch script of each resource class (and of the trials no class matches)."""
    from ._slurm import sbatch_preview

    if not plan.resources:
        return ["sbatch script that would be submitted for the first trial:",
                sbatch_preview(plan.launcher_params(None), plans[0] if plans else [])]
    lines = []
    for resource in (*plan.resources, None):
        planned = next((o for p, o in zip(params, plans, strict=True)
                        if plan.resource_class(p) is resource), None)
        if resource is None:
            head = "sbatch script of the trials no resource class matches (hydra.launcher)"
        else:
            head = (f"sbatch script of resource class {resource.name!r} "
                    f"({', '.join(f'{k}={v}' for k, v in resource.settings.items())})")
        which = "its first planned trial" if planned is not None else "no planned trial yet"
        lines += [f"{head}, {which}:", sbatch_preview(plan.launcher_params(resource),
                                                      planned or [])]
    return lines
