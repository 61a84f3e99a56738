"""Planning a sweep: ``hydra.sweeper.*`` + the composed config + the command line -> a plan.

:func:`build_plan` validates everything a user can get wrong about the sweep itself (budget,
slots, directions, pruner name, search space, conditions, objectives) and returns one frozen
:class:`SweepPlan`. It starts nothing: no launcher call, no storage, no sampler. It needs the
composed config and a way to list a config group's options, so a unit test can plan a sweep
from ``OmegaConf.create(...)``. What the plan knows is all the rest of the sweeper reads:
:mod:`._study` opens the study from it, :mod:`._loop` runs its slots, :mod:`._dryrun` prints it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection

from hpo import trial_context
from hpo.errors import ConfigError, SearchSpaceError
from hpo.naming import default_study_name
from hpo.space import ParamSpec, check_value, clamp_value

from ._grammar import ParsedParam, format_value, parse_params
from .config import HPOSweeperConf

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
INTERRUPT_POLICIES = ("keep", "cancel")
_JOB_NUM = re.compile(r"\$\{hydra[.:]job\.num\}")
_PER_JOB = re.compile(r"\$\{[^}]*hydra[.:](job|runtime|overrides)\b")


@dataclass(frozen=True)
class LauncherFacts:
    """What the sweep needs to know of its Hydra launcher (read once from the instance).

    Attributes:
        name: The launcher's class name.
        in_process: Jobs run in this process (Hydra's basic launcher), one at a time.
        fast: In-process jobs take the cached-composition path (``fast_inprocess``).
        remote: Jobs may run on other hosts (submitit_slurm, or a launcher we do not know).
        executor: hydra-submitit-launcher's executor, ``"slurm"`` or ``"local"``; None for
            other launchers.
        params: The submitit launcher's parameters (the resolved ``hydra.launcher`` node).
    """

    name: str = "BasicLauncher"
    in_process: bool = True
    fast: bool = True
    remote: bool = False
    executor: str | None = None
    params: Mapping[str, Any] | None = None

    @property
    def slurm_params(self) -> Mapping[str, Any] | None:
        """The submitit_slurm launcher's parameters (for the sbatch preview); else None."""
        return self.params if self.executor == "slurm" else None


@dataclass(frozen=True)
class ResourceClass:
    """Launcher settings for the trials whose ``param`` took one of ``values``
    (an entry of ``hydra.sweeper.resources``).

    Attributes:
        name: The entry's key as written, e.g. ``"model=resnet9"``.
        param: The searched parameter it looks at.
        values: The values (as strings) that select it.
        settings: ``hydra.launcher`` keys and their values for those trials' jobs.
    """

    name: str
    param: str
    values: frozenset[str]
    settings: Mapping[str, Any]

    def applies(self, params: Mapping[str, Any]) -> bool:
        """Whether a trial with ``params`` belongs to this class."""
        return self.param in params and str(params[self.param]) in self.values


@dataclass(frozen=True)
class Budget:
    """The study's trial budget and what ends a run early."""

    n_trials: int
    max_failure_rate: float
    max_retries: int


@dataclass(frozen=True)
class SamplerSpec:
    """What the sampler is built from (:func:`._study.build_sampler`)."""

    sampler: Any  # a sampler or a _target_ config; None: LLMSampler when `agent`, else fallback
    fallback: Any  # the classical sampler or its config; None: TPE
    agent: DictConfig | None  # the app's `agent` node (resolved when built); None: no LLM
    seed: int | None
    dump_dir: str
    fidelity: str | None
    sensitive: Mapping[str, str]


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep does, decided before anything runs. Built by :func:`build_plan`.

    Attributes:
        study_name: The study (rerunning with the same name resumes it).
        storage_url: Storage URL with sqlite/journal paths made absolute; None or "memory".
        sqlite_wal: Open a SQLite file in WAL mode (False when jobs may run on other hosts,
            where WAL does not work); an explicit ``?journal_mode=`` in the URL wins.
        directions: "minimize"/"maximize" per objective.
        objective_names: One name per objective.
        space: The searched parameters, config defaults and descriptions; a conditional one
            carries its ``condition``.
        param_keys: Optuna parameter name -> the override key as written (``+x``, ``model``).
        fixed: Overrides passed to every trial unchanged.
        budget: Trials, failure rate, retries.
        slots: Parallel slots (``n_jobs``): trials in flight at once, proposals per LLM call.
        folds: k-fold CV: jobs per trial (1: no CV).
        heartbeat_interval_s: Seconds between heartbeats of running trials (0: none).
        heartbeat_grace_s: A running trial without a heartbeat for this long is an orphan.
        pruner: The pruner: a name of :data:`PRUNERS`, a pruner or a _target_ config.
        sampler: What the sampler is built from.
        launcher: The launcher's facts.
        sweep_dir: ``hydra.sweep.dir``, resolved.
        output_dir_pattern: Absolute output dir of trial ``{number}``'s job when it can be
            derived (in-process jobs, a subdir made of literal text and the job number); None:
            the sweeper stores each trial's output dir instead.
        dry_run: Print the plan; start and store nothing.
        study_named: The user named the study (``hydra.sweeper.study_name``); else
            ``study_name`` is ``default_study_name``.
        default_study_name: The config name plus a hash of the search space
            (:func:`hpo.naming.default_study_name`): the study when none is named, and the
            name the clash message proposes.
        progress: Live progress on a terminal.
        resources: Launcher settings per trial, in order (the first that applies wins).
        on_interrupt: What SIGINT/SIGTERM does to submitit jobs in flight: keep or cancel.
        array: Ready trials of one resource class go out as one SLURM job array.
        detach: Submit the driver as a SLURM job instead of running the sweep here.
        driver_sbatch: sbatch options of that driver job (``{option: value}``).
    """

    study_name: str
    storage_url: str | None
    sqlite_wal: bool
    directions: tuple[str, ...]
    objective_names: tuple[str, ...]
    space: tuple[ParamSpec, ...]
    param_keys: Mapping[str, str]
    fixed: tuple[str, ...]
    budget: Budget
    slots: int
    folds: int
    heartbeat_interval_s: float
    heartbeat_grace_s: float
    pruner: Any
    sampler: SamplerSpec
    launcher: LauncherFacts
    sweep_dir: str
    output_dir_pattern: str | None
    dry_run: bool = False
    progress: bool = True
    study_named: bool = True
    default_study_name: str = ""
    resources: tuple[ResourceClass, ...] = ()
    on_interrupt: str = "keep"
    array: bool = False
    detach: bool = False
    driver_sbatch: Mapping[str, str] = field(default_factory=dict)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """Parameter name -> distribution, in search-space order."""
        return {s.name: s.distribution for s in self.space}

    @property
    def conditions(self) -> dict[str, tuple[str, frozenset[str]]]:
        """Conditional parameter -> (the parameter it depends on, the values enabling it)."""
        return {s.name: (s.condition[0], frozenset(s.condition[1]))
                for s in self.space if s.condition is not None}

    @property
    def study_directions(self) -> list[StudyDirection]:
        """The directions as Optuna's enum."""
        return [StudyDirection[d.upper()] for d in self.directions]

    @property
    def in_memory(self) -> bool:
        """Whether the study lives in this process only (nothing persisted)."""
        return self.storage_url in (None, "", "memory", "inmemory", "in-memory")

    def trial_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The Hydra overrides of a trial with ``params``: the fixed ones, then one per param."""
        keys = self.param_keys
        return [*self.fixed,
                *(f"{keys[n]}={format_value(v)}" for n, v in params.items() if n in keys)]

    def jobs(self, overrides: Sequence[str], number: int, trial_id: int) -> list[list[str]]:
        """The job(s) of trial ``number``: its overrides plus how the job finds its trial
        (``hydra.job.env_set``); with k-fold CV one job per fold in ``trial_N/fold_i``."""
        job = [
            *overrides,
            f"++hydra.job.env_set.{trial_context.ENV_TRIAL_NUMBER}={number}",
            f"++hydra.job.env_set.{trial_context.ENV_TRIAL_ID}={trial_id}",
        ]
        if self.folds <= 1:
            return [job]
        return [
            # every fold job reports to the trial: its own per-class scores and curves
            [*job, f"cv.fold={i}", f"hydra.sweep.subdir=trial_{number}/fold_{i}"]
            for i in range(self.folds)
        ]

    def resource_class(self, params: Mapping[str, Any]) -> ResourceClass | None:
        """The resource class of a trial with ``params``: the first that applies, or None."""
        return next((r for r in self.resources if r.applies(params)), None)

    def launcher_params(self, resource: ResourceClass | None) -> dict[str, Any]:
        """The launcher's parameters for a job of ``resource``: ``hydra.launcher`` with the
        class's settings over it (a dict setting such as ``additional_parameters`` is merged
        key by key)."""
        params = dict(self.launcher.params or {})
        for key, value in (resource.settings if resource else {}).items():
            old = params.get(key)
            params[key] = ({**old, **value} if isinstance(old, Mapping)
                           and isinstance(value, Mapping) else value)
        return params

    def output_dir(self, number: int) -> str | None:
        """The output dir of trial ``number`` when derivable (see ``output_dir_pattern``)."""
        if self.output_dir_pattern is None:
            return None
        return self.output_dir_pattern.replace("{number}", str(number))

    def validation_points(self) -> list[dict[str, Any]]:
        """Parameter values to compose the config with before anything runs.

        One point with every unconditional parameter; then, for each condition, a point where
        it holds, with the parameters it enables (e.g. model=cnn with model.net.channels), so
        every key is checked in a config where it exists.
        """
        rep = {s.name: _representative(s) for s in self.space}
        conditions = self.conditions
        base = {n: v for n, v in rep.items() if n not in conditions}
        points = [base]
        branches: dict[tuple[str, str], list[str]] = {}
        for param, (other, values) in conditions.items():
            for value in sorted(values):
                branches.setdefault((other, value), []).append(param)
        dists = self.distributions
        for (other, value), params in branches.items():
            point = dict(base)
            choice = next((c for c in getattr(dists[other], "choices", ()) if str(c) == value),
                          value)
            point[other] = choice
            point.update({p: rep[p] for p in params})
            points.append(point)
        return points


def build_plan(
    options: HPOSweeperConf,
    arguments: Sequence[str],
    config: DictConfig,
    *,
    group_options: Callable[[str], list[str]],
    launcher: LauncherFacts,
) -> SweepPlan:
    """Validate the sweep and decide everything about it.

    Args:
        options: The ``hydra.sweeper`` values (the facade's keyword arguments).
        arguments: The sweep overrides of the command line (they win over ``params``).
        config: The composed config of the run (with its ``hydra`` node).
        group_options: The options of a config group, e.g. ``"model" -> ["cnn", "mlp"]``.
        launcher: What the launcher is.

    Raises:
        ConfigError: A bad ``hydra.sweeper`` value, objective or condition (one line).
        SearchSpaceError: A bad search space.
    """
    n_trials, n_jobs = options.n_trials, options.n_jobs
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(
            f"hydra.sweeper.n_trials={n_trials!r} must be an integer >= 1 "
            "(the total number of trials the study should hold)"
        )
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
        raise ConfigError(
            f"hydra.sweeper.n_jobs={n_jobs!r} must be an integer >= 1 (parallel slots)"
        )
    rate = float(options.max_failure_rate)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(
            f"hydra.sweeper.max_failure_rate={options.max_failure_rate!r} must be within [0, 1]"
        )
    interval, grace = options.heartbeat_interval_s, options.heartbeat_grace_s
    if interval < 0 or grace < interval:
        raise ConfigError(
            f"hydra.sweeper.heartbeat_grace_s={grace} must be >= "
            f"heartbeat_interval_s={interval} >= 0"
        )
    directions = parse_directions(options.direction)
    check_pruner(options.pruner)
    on_interrupt = str(options.on_interrupt)
    if on_interrupt not in INTERRUPT_POLICIES:
        raise ConfigError(
            f"hydra.sweeper.on_interrupt={options.on_interrupt!r} is unknown: use keep (jobs "
            "in flight run on and are re-attached on rerun) or cancel"
        )
    check_cluster_options(options, launcher)

    groups = group_choices(config)
    searched, fixed = search_space(options.params or {}, arguments)
    specs = param_specs(searched, config, groups, group_options, options.descriptions or {})
    specs = with_conditions(specs, options.conditions or {})
    resources = resource_classes(_plain(options.resources) or {}, specs, launcher)
    objective_names = objectives(config, directions)
    folds = int(OmegaConf.select(config, "cv.folds", default=1) or 1)
    study_named = options.study_name not in (None, "")
    default_name = default_study_name(
        OmegaConf.select(config, "hydra.job.config_name", default=None),
        {s.name: s.distribution for s in specs})
    study_name = str(options.study_name) if study_named else default_name
    if not study_named:  # the sweep dir and the jobs see the name (${hydra.sweeper.study_name})
        config = with_study_name(config, study_name)
    sweep_dir = str(config.hydra.sweep.dir)
    chosen = None if _llm_choice(options.sampler) else options.sampler
    agent = OmegaConf.select(config, "agent", default=None) if chosen is None else None
    max_epochs = OmegaConf.select(config, "trainer.max_epochs", default=None)
    sampler = SamplerSpec(
        sampler=chosen,
        fallback=options.fallback_sampler,
        agent=agent,
        seed=options.seed,
        dump_dir=str(Path(sweep_dir) / "llm"),
        fidelity=f"up to {max_epochs} epochs per trial" if max_epochs else None,
        sensitive=sensitive_names(specs, groups, study_name) if agent is not None else {},
    )
    return SweepPlan(
        study_name=study_name,
        storage_url=absolute_storage_url(options.storage),
        sqlite_wal=not launcher.remote,
        directions=tuple(directions),
        objective_names=tuple(objective_names),
        space=tuple(specs),
        param_keys={p.name: p.key for p in searched},
        fixed=tuple(fixed),
        budget=Budget(n_trials=n_trials, max_failure_rate=rate,
                      max_retries=int(options.max_retries)),
        slots=n_jobs,
        folds=folds,
        heartbeat_interval_s=float(interval),
        heartbeat_grace_s=float(grace),
        pruner=options.pruner,
        sampler=sampler,
        launcher=launcher,
        sweep_dir=sweep_dir,
        output_dir_pattern=output_dir_pattern(config, launcher, folds),
        dry_run=bool(options.dry_run),
        progress=bool(options.progress),
        study_named=study_named,
        default_study_name=default_name,
        resources=resources,
        on_interrupt=on_interrupt,
        array=bool(options.array),
        detach=bool(options.detach),
        driver_sbatch={str(k): str(v) for k, v in (_plain(options.driver_sbatch) or {}).items()},
    )


# ------------------------------------------------------------------------ sweeper values
def parse_directions(direction: Any) -> list[str]:
    """``"minimize"`` or a list of directions -> the lower-case names, checked."""
    seq = isinstance(direction, list | tuple | Sequence) and not isinstance(direction, str)
    raw = list(direction) if seq else [direction]
    if not raw:
        raise ConfigError("hydra.sweeper.direction is empty: use minimize or maximize")
    out = []
    for d in raw:
        name = d.name.lower() if hasattr(d, "name") else str(d).lower()
        if name not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={d!r} is not minimize or maximize "
                "(for several objectives give a list, e.g. [maximize, minimize])"
            )
        out.append(name)
    return out


def check_pruner(spec: Any) -> None:
    """Raise unless ``spec`` names a known pruner (configs and instances are built later)."""
    if isinstance(spec, str) and spec not in PRUNERS:
        raise ConfigError(
            f"hydra.sweeper.pruner={spec!r} is unknown: use one of {', '.join(PRUNERS)} "
            "or a config with a _target_"
        )


def absolute_storage_url(url: str | None) -> str | None:
    """``url`` with a relative sqlite/journal path resolved against the working directory."""
    if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path, sep, query = url[len("sqlite:///"):].partition("?")
        if path and path != ":memory:":
            url = "sqlite:///" + str(Path(path).resolve()) + sep + query
    if url and url.startswith("journal://"):
        url = "journal://" + str(Path(url[len("journal://"):]).resolve())
    return url


def _llm_choice(sampler: Any) -> bool:
    """Whether ``hydra.sweeper.sampler`` is ``hydra/sweeper/sampler=llm`` (the default,
    named)."""
    return (isinstance(sampler, Mapping) or OmegaConf.is_dict(sampler)) and bool(
        sampler.get("llm")) and "_target_" not in sampler


def with_study_name(config: DictConfig, name: str) -> DictConfig:
    """A copy of ``config`` whose ``hydra.sweeper.study_name`` is ``name``."""
    from omegaconf import open_dict

    out = copy.deepcopy(config)
    with open_dict(out):
        OmegaConf.update(out, "hydra.sweeper.study_name", name, force_add=True)
    return out


def check_cluster_options(options: HPOSweeperConf, launcher: LauncherFacts) -> None:
    """Raise unless ``array``, ``detach`` and ``resources`` suit the launcher and storage."""
    if options.array and launcher.executor != "slurm":
        raise ConfigError(
            "hydra.sweeper.array=true needs hydra/launcher=submitit_slurm (job arrays are "
            f"SLURM's; the launcher is {launcher.name}): remove it or switch the launcher"
        )
    if options.detach:
        if launcher.executor != "slurm":
            raise ConfigError(
                "hydra.sweeper.detach=true submits the driver with sbatch and needs "
                f"hydra/launcher=submitit_slurm (the launcher is {launcher.name})"
            )
        storage = options.storage
        if storage in (None, "", "memory", "inmemory", "in-memory"):
            raise ConfigError(
                "hydra.sweeper.detach=true needs a storage the driver job can reach, e.g. "
                "hydra.sweeper.storage=sqlite:///$HOME/hpo/hpo.db (memory is lost with the "
                "process)"
            )
    if options.resources and launcher.executor is None:
        raise ConfigError(
            "hydra.sweeper.resources sets launcher settings per trial and needs a submitit "
            "launcher (hydra/launcher=submitit_slurm or submitit_local; the launcher is "
            f"{launcher.name})"
        )


def resource_classes(
    resources: Mapping[str, Any], specs: Sequence[ParamSpec], launcher: LauncherFacts
) -> tuple[ResourceClass, ...]:
    """``hydra.sweeper.resources`` checked: each key a condition on a searched parameter
    (``param=value[,value]``, values it can take), each value a mapping of launcher keys."""
    dists = {s.name: s.distribution for s in specs}
    known = sorted(launcher.params or {})
    out = []
    for name, settings in ((str(k), v) for k, v in resources.items()):
        where = f"hydra.sweeper.resources[{name!r}]"
        param, sep, raw = name.partition("=")
        param = param.strip()
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        if not sep or not values or param not in dists:
            searched = ", ".join(dists)
            raise ConfigError(
                f"{where}: write the class as '<searched param>=value[,value]', e.g. "
                f"model=resnet9 (searched: {searched})"
            )
        choices = getattr(dists[param], "choices", None)
        if choices is not None:
            bad = sorted(values - {str(c) for c in choices})
            if bad:
                raise ConfigError(
                    f"{where}: {param}={bad[0]} is not a value of {param}: choose from "
                    f"{', '.join(str(c) for c in choices)}"
                )
        if not isinstance(settings, Mapping) or not settings:
            raise ConfigError(
                f"{where} must map launcher settings to values, e.g. {{mem_gb: 32, "
                "timeout_min: 240}"
            )
        for key in settings:
            if str(key) not in known:
                raise ConfigError(
                    f"{where}.{key} is not a setting of hydra.launcher ({launcher.name}): "
                    f"choose from {', '.join(known)}"
                )
        out.append(ResourceClass(name=name, param=param, values=values,
                                 settings={str(k): v for k, v in settings.items()}))
    return tuple(out)


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain containers (Hydra hands the sweeper's options over so)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# ------------------------------------------------------------------------ search space
def search_space(
    params: Mapping[str, str], arguments: Sequence[str]
) -> tuple[list[ParsedParam], list[str]]:
    """Parsed params (config ``params``, then the command line, which wins) + fixed ones."""
    by_name: dict[str, ParsedParam] = {}
    for p in parse_params([(str(k), str(v)) for k, v in params.items()]):
        by_name[p.name] = p
    given: dict[str, str] = {}
    for arg, p in zip(arguments, parse_params(list(arguments)), strict=True):
        if p.name in given:
            raise SearchSpaceError(
                f"{p.name} is given twice on the command line ({given[p.name]!r} and {arg!r}):"
                " keep one"
            )
        given[p.name] = arg
        by_name.pop(p.name, None)
        by_name[p.name] = p
    searched = [p for p in by_name.values() if p.distribution is not None]
    fixed = [f"{p.key}={p.fixed}" for p in by_name.values() if p.distribution is None]
    if not searched:
        raise SearchSpaceError(
            "nothing to search: give hydra.sweeper.params or sweep overrides such as "
            "'optimizer.lr=tag(log, interval(1e-5, 1e-1))' or model=mlp,cnn"
        )
    return searched, fixed


def group_choices(config: DictConfig) -> dict[str, str]:
    """The config-group choices of the run (``hydra.runtime.choices``), Hydra's own left out."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None)
    if choices is None:
        return {}
    return {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/")}


def param_specs(
    searched: list[ParsedParam],
    config: DictConfig,
    groups: Mapping[str, str],
    group_options: Callable[[str], list[str]],
    descriptions: Mapping[str, str],
) -> list[ParamSpec]:
    """One :class:`ParamSpec` per searched parameter, with the config's value as default."""
    specs = []
    for p in searched:
        dist = p.distribution
        assert dist is not None
        if p.name in groups:
            options = group_options(p.name)
            if isinstance(dist, CategoricalDistribution):
                bad = [c for c in dist.choices if str(c) not in options]
                if bad:
                    raise ConfigError(
                        f"{p.name}={bad[0]} is not an option of config group {p.name!r}: "
                        f"choose from {', '.join(options)}"
                    )
            default: Any = groups[p.name]
        else:
            default = OmegaConf.select(config, p.name, default=None,
                                       throw_on_resolution_failure=False)
            if isinstance(default, DictConfig | list) or OmegaConf.is_config(default):
                default = None
        configured = None
        if default is not None and check_value(dist, default) is not None:
            clamped = clamp_value(dist, default)
            if clamped is not None and not isinstance(dist, CategoricalDistribution):
                log.warning("the default of %s (%s) is outside %s: the baseline trial uses %s "
                            "(clamped); change the default or widen the range to try it as it "
                            "is", p.name, default, dist, clamped)
                configured = default
            default = clamped if clamped is not None else None
        if default is not None and isinstance(dist, CategoricalDistribution):
            # group choices come back as strings; match the declared choice's type
            default = next((c for c in dist.choices if str(c) == str(default)), None)
        specs.append(ParamSpec(name=p.name, distribution=dist, default=default,
                               description=str(descriptions.get(p.name, "")),
                               configured_default=configured))
    return specs


def with_conditions(specs: list[ParamSpec], conditions: Mapping[str, str]) -> list[ParamSpec]:
    """``specs`` with ``{param: "other=v1,v2"}`` set as their ``condition``, checked."""
    names = {s.name for s in specs}
    parsed: dict[str, tuple[str, tuple[str, ...]]] = {}
    for param, cond in ((str(k), str(v)) for k, v in conditions.items()):
        other, sep, values = cond.partition("=")
        other = other.strip()
        if param not in names:
            raise ConfigError(
                f"hydra.sweeper.conditions names {param!r}, which is not searched: "
                "condition only parameters of hydra.sweeper.params or the command line"
            )
        if not sep or other not in names or other == param:
            raise ConfigError(
                f"hydra.sweeper.conditions.{param}={cond!r}: write '<searched param>="
                "value[,value]', e.g. model=mlp"
            )
        parsed[param] = (other, tuple(sorted({v.strip() for v in values.split(",")
                                              if v.strip()})))
    return [dataclasses.replace(s, condition=parsed[s.name]) if s.name in parsed else s
            for s in specs]


def objectives(config: DictConfig, directions: Sequence[str]) -> list[str]:
    """The objective names: the app's ``objective`` (one per direction), else generic ones."""
    obj = OmegaConf.select(config, "objective", default=None)
    if obj is None:
        return (["objective"] if len(directions) == 1
                else [f"objective_{i}" for i in range(len(directions))])
    names = [str(o) for o in obj] if OmegaConf.is_list(obj) else [str(obj)]
    if len(names) != len(directions):
        raise ConfigError(
            f"objective={names} names {len(names)} metric(s) but hydra.sweeper.direction="
            f"{list(directions)} has {len(directions)}: give one direction per metric"
        )
    return names


def sensitive_names(
    specs: Sequence[ParamSpec], groups: Mapping[str, str], study_name: str
) -> dict[str, str]:
    """Names the prompts must not carry (anonymized): dataset, fixed model, study, paths."""
    from hpo.agents.history import Anonymizer

    searched = {s.name for s in specs}
    models = [groups["model"]] if "model" in groups and "model" not in searched else []
    return dict(Anonymizer.from_names(
        dataset=groups.get("data") if "data" not in searched else None,
        models=models,
        study=study_name,
        paths=[str(Path.cwd())],
    ).mapping)


def output_dir_pattern(config: DictConfig, launcher: LauncherFacts, folds: int) -> str | None:
    """The output dir of trial ``{number}`` as Hydra's ``run_job`` will compute it, or None
    when it depends on more than the job number (then it is stored per trial)."""
    if not launcher.in_process:
        return None  # a job elsewhere resolves its paths in its own working directory
    sweep = OmegaConf.to_container(config.hydra.sweep, resolve=False)
    assert isinstance(sweep, dict)
    raw_dir, raw_sub = str(sweep.get("dir")), str(sweep.get("subdir"))
    if _PER_JOB.search(raw_dir):
        return None
    sub = "trial_{number}/fold_0" if folds > 1 else _JOB_NUM.sub("{number}", raw_sub)
    if "${" in sub or "{number}" not in sub:
        return None
    try:
        sweep_dir = str(config.hydra.sweep.dir)
    except Exception:  # an interpolation the driver cannot resolve: let the job say
        return None
    return os.path.abspath(os.path.join(sweep_dir, sub))


def _representative(spec: ParamSpec) -> Any:
    """A valid value of ``spec`` for a test composition: its default, else a bound or choice."""
    if spec.default is not None:
        return spec.default
    d = spec.distribution
    if isinstance(d, CategoricalDistribution):
        return d.choices[0]
    assert isinstance(d, FloatDistribution | IntDistribution)
    return d.low
