"""The study of a plan: its sampler and pruner, the study opened in storage, results told.

Everything here reads the :class:`~._plan.SweepPlan`; nothing here decides what to run next
(that is :mod:`._loop`). The one place that touches the process environment is
:func:`export_job_context`: jobs find their study through it (``hpo.trial_context``).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo import attrs, trial_context
from hpo.errors import ConfigError, first_line
from hpo.space import step_values
from hpo.storage import open_storage, redact_url

from ._plan import SweepPlan

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ sampler and pruner
def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """The pruner of ``hydra.sweeper.pruner``: a name, a pruner, or a _target_ config."""
    if isinstance(spec, optuna.pruners.BasePruner):
        return spec
    if spec is None or spec == "none":
        return optuna.pruners.NopPruner()
    if spec == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if spec == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if spec == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return instantiate(spec)


def build_fallback(plan: SweepPlan) -> optuna.samplers.BaseSampler:
    """The classical sampler (``hydra.sweeper.fallback_sampler``; TPE when unset)."""
    if not plan.sampler.fallback:
        return optuna.samplers.TPESampler(seed=plan.sampler.seed)
    return _as_sampler(plan.sampler.fallback, "fallback_sampler")


def build_sampler(plan: SweepPlan) -> optuna.samplers.BaseSampler:
    """The study's sampler: ``hydra.sweeper.sampler`` if given; else the LLMSampler when the
    app has an ``agent`` node (through ``hpo.samplers.sampler_from_agent_config``, the one
    place that reads it); else the fallback sampler."""
    spec = plan.sampler
    if spec.sampler is not None:
        return _as_sampler(_with_grid(spec.sampler, plan), "sampler")
    fallback = build_fallback(plan)
    if spec.agent is None:
        return fallback
    from hpo.samplers import sampler_from_agent_config

    agent = OmegaConf.to_container(spec.agent, resolve=True)
    assert isinstance(agent, dict)
    return sampler_from_agent_config(
        {str(k): v for k, v in agent.items()},
        search_space=list(plan.space),
        fallback=fallback,
        seed=spec.seed,
        batch_size=plan.slots,
        n_trials=plan.budget.n_trials,
        dump_dir=Path(spec.dump_dir),
        objective_names=list(plan.objective_names),
        sensitive=dict(spec.sensitive),
        fidelity=spec.fidelity,
    )


def _with_grid(obj: Any, plan: SweepPlan) -> Any:
    """``hydra/sweeper/sampler=grid`` (a partial GridSampler) with no ``search_space``: the
    grid of the searched params (choices as they are, ranges by their step)."""
    if not (isinstance(obj, functools.partial) and obj.func is optuna.samplers.GridSampler
            and obj.keywords.get("search_space") is None):
        return obj
    grid = {}
    for s in plan.space:
        values = grid_values(s.distribution)
        if values is None:
            low, high = getattr(s.distribution, "low", "?"), getattr(s.distribution, "high", "?")
            raise ConfigError(
                f"hydra/sweeper/sampler=grid needs the values of {s.name!r} ({s.distribution}):"
                f" give it a step, e.g. {s.name}=range({low}, {high}, step=...), or choice(...)"
            )
        grid[s.name] = values
    return obj.func(*obj.args, **{**obj.keywords, "search_space": grid})


def grid_values(dist: BaseDistribution) -> list[Any] | None:
    """The grid points of a distribution: its choices, or its range by its step; None for a
    float interval without a step."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return step_values(dist)


def _as_sampler(obj: Any, name: str) -> optuna.samplers.BaseSampler:
    # Hydra instantiates nested _target_ configs when it builds the sweeper
    if isinstance(obj, optuna.samplers.BaseSampler):
        return obj
    try:
        built = instantiate(obj)
    except Exception as exc:
        raise ConfigError(f"hydra.sweeper.{name} cannot be built: {first_line(exc)}") from exc
    if not isinstance(built, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"hydra.sweeper.{name} built {type(built).__name__}, not an Optuna sampler: "
            "give a config whose _target_ is a sampler class"
        )
    return built


# ------------------------------------------------------------------ the study in storage
def check_sweep_dir(plan: SweepPlan) -> None:
    """Raise unless ``hydra.sweep.dir`` can be created and written."""
    sweep_dir = Path(plan.sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=sweep_dir, prefix=".hpo-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"hydra.sweep.dir={str(sweep_dir)!r} is not writable ({exc.strerror or exc}): "
            "point hydra.sweep.dir at a folder you can write"
        ) from exc


def open_study(
    plan: SweepPlan,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create or load the plan's study; check that its directions and space still match.

    Raises:
        ConfigError: The storage cannot be opened, or the study exists with other directions
            or another distribution of a parameter.
    """
    url = plan.storage_url
    storage = open_storage(None if plan.in_memory else url, wal=plan.sqlite_wal)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=plan.study_name,
            directions=plan.study_directions,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as exc:
        raise ConfigError(
            f"cannot create or load study {plan.study_name!r} in {redact_url(url or 'memory')}"
            f": {first_line(exc)}"
        ) from exc
    existing = [d.name.lower() for d in study.directions]
    if existing != list(plan.directions):
        raise ConfigError(
            f"study {plan.study_name!r} already exists with direction {existing}, not "
            f"{list(plan.directions)}: {_other_study(plan)}, or keep the direction"
        )
    check_space(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), plan)
    if not study.user_attrs.get(attrs.SEARCH_SPACE):
        study.set_user_attr(attrs.SEARCH_SPACE, {
            s.name: s.distribution.__class__.__name__ for s in plan.space
        })
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(plan.objective_names))
    return study


def _other_study(plan: SweepPlan) -> str:
    """The exact override that gives this sweep a study of its own."""
    name = plan.default_study_name
    if not name or name == plan.study_name:  # the default clashes too: suffix it
        name = f"{plan.study_name}-2"
    return f"rerun with hydra.sweeper.study_name={name} for a study of its own"


def check_space(trials: Sequence[FrozenTrial], plan: SweepPlan) -> None:
    """Raise a one-line ConfigError when the study's complete ``trials`` searched another
    space than ``plan`` (the sweep and its dry run check the same)."""
    name = plan.study_name
    distributions = plan.distributions
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        for param, dist in t.distributions.items():
            new = distributions.get(param)
            if new is not None and new != dist:
                raise ConfigError(
                    f"parameter {param!r} is {dist} in study {name!r} but {new} now: "
                    f"{_other_study(plan)}, or keep the search space of study {name!r}"
                )
        break


def register_driver(study: optuna.Study, driver: str, plan: SweepPlan) -> None:
    """Record this driver (its output-dir pattern, start, and SLURM job when it runs as one)
    under its own study user attr (``hpo:drivers:<id>``): one write that no other driver's can
    undo, where a shared list lost the drivers that started together."""
    from ._detach import ENV_DRIVER_JOB, ENV_DRIVER_LOG

    study.set_user_attr(attrs.driver_key(driver), attrs.driver_record(
        driver, plan.output_dir_pattern, since=time.time(),
        slurm_job=os.environ.get(ENV_DRIVER_JOB) or None,
        log=os.environ.get(ENV_DRIVER_LOG) or None))


def export_job_context(plan: SweepPlan, study: optuna.Study, pruner: Any) -> None:
    """Tell every job of this process's launchers where its study lives.

    The storage URL may carry a password, so it travels through this process's environment
    (inherited by every launcher, exported by sbatch), never through the configs Hydra saves.
    An in-memory storage is registered in-process under a key instead.
    """
    if plan.in_memory or isinstance(study._storage, optuna.storages.InMemoryStorage):
        key = f"memory:{id(study._storage)}"
        trial_context.register_live_storage(key, study._storage)
        os.environ[trial_context.ENV_STORAGE] = key
    else:
        assert plan.storage_url is not None
        os.environ[trial_context.ENV_STORAGE] = plan.storage_url
    os.environ[trial_context.ENV_STUDY] = plan.study_name
    os.environ[trial_context.ENV_PRUNER] = trial_context.encode_pruner(pruner)


# ------------------------------------------------------------------ results
class SamplerExhausted(Exception):
    """The sampler covered its whole space (GridSampler, BruteForceSampler); the tell stored."""


def tell(
    study: optuna.Study,
    trial: optuna.Trial | int,
    values: Sequence[float] | None = None,
    *,
    state: TrialState | None = None,
) -> FrozenTrial:
    """``study.tell`` and the finished trial it returns (callers reuse it, never re-read it).

    Raises:
        SamplerExhausted: The sampler called ``study.stop()`` (only allowed inside
            ``study.optimize``); the result is stored all the same.
    """
    try:
        return study.tell(trial, values, state=state)
    except RuntimeError as exc:
        if "stop" not in str(exc).lower():
            raise
        raise SamplerExhausted(str(exc)) from exc
