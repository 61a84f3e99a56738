"""The work of the ``hpo`` sweeper: search space, study, slots, tells. Heavy imports live here."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpo import trial_context
from hpo.errors import ConfigError, FailureRateExceeded, SearchSpaceError
from hpo.space import ParamSpec, check_value, clamp_value
from hpo.storage import open_storage, redact_url

from ._grammar import ParsedParam, format_value, parse_params

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
# Attribute keys this sweeper writes on trials (user attrs: visible in the dashboard).
A_ERROR = "hpo:error"
A_DRIVER = "hpo:driver"
A_HEARTBEAT = "hpo:heartbeat"
A_RETRIED = "hpo:retried"  # this failed trial was re-run as another trial: not in the budget
A_RETRY_OF = "hpo:retry_of"
A_RETRY_COUNT = "hpo:retry_count"
A_OUTPUT_DIR = "hpo:output_dir"
A_JOB_ID = "hpo:job_id"
A_OVERRIDES = "hpo:overrides"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid())}"


def _proc_start(pid: int) -> str:
    # the process start time (clock ticks since boot) tells a live pid from a reused one
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "?"


def _driver_alive(driver: str) -> bool | None:
    """True/False for a driver on this host; None when it runs elsewhere (unknown)."""
    try:
        host, pid, start = driver.rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _proc_start(int(pid)) == start


def _counts_in_budget(t: FrozenTrial) -> bool:
    return t.state in FINISHED and not t.user_attrs.get(A_RETRIED, False)


def _representative(spec: ParamSpec) -> Any:
    """A valid value of ``spec`` for a test composition: its default, else a bound or choice."""
    if spec.default is not None:
        return spec.default
    d = spec.distribution
    return d.choices[0] if isinstance(d, CategoricalDistribution) else d.low  # type: ignore[attr-defined]


def _first_line(exc: BaseException, limit: int = 500) -> str:
    if type(exc).__name__ == "FailedJobError":  # submitit: the job's own error ends the trace
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        last = next((ln.strip() for ln in reversed(lines) if not ln.startswith(" ")), "")
        return f"job failed: {last}"[:limit]
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    return text[:limit]


@dataclass
class _Slot:
    trial: optuna.Trial
    overrides: list[str]
    started: float = field(default_factory=time.monotonic)


class HPOSweeperImpl(Sweeper):
    """See :class:`hydra_plugins.hpo_sweeper.config.HPOSweeperConf` for the options."""

    def __init__(
        self,
        *,
        storage: str | None,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        direction: Any,
        params: dict[str, str] | None,
        descriptions: dict[str, str] | None = None,
        conditions: dict[str, str] | None = None,
        max_failure_rate: float = 0.5,
        seed: int | None = None,
        sampler: Any = None,
        fallback_sampler: Any = None,
        pruner: Any = "none",
        heartbeat_interval_s: int = 30,
        heartbeat_grace_s: int = 120,
        max_retries: int = 1,
        dry_run: bool = False,
        progress: bool = True,
        fast_inprocess: bool = True,
    ) -> None:
        # validated in sweep(): an error raised here would reach the user wrapped in Hydra's
        # instantiate message (three lines), not as one line
        self.direction_cfg = direction
        self.directions: list[str] = []
        self.storage_url = storage
        self.study_name = str(study_name)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params_cfg = dict(params or {})
        self.descriptions = dict(descriptions or {})
        self.conditions_cfg = {str(k): str(v) for k, v in (conditions or {}).items()}
        self.max_failure_rate = float(max_failure_rate)
        self.seed = seed
        self.sampler_cfg = sampler
        self.fallback_cfg = fallback_sampler
        self.pruner_cfg = pruner
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_grace_s = heartbeat_grace_s
        self.max_retries = max_retries
        self.dry_run = dry_run
        self.progress = progress
        self.fast_inprocess = fast_inprocess
        self._inprocess: Any = None
        self.pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None
        self._launch_lock: threading.Lock | None = None

    # ------------------------------------------------------------------ setup / validation
    def _validate(self) -> None:
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(
                f"hydra.sweeper.n_trials={self.n_trials!r} must be an integer >= 1 "
                "(the total number of trials the study should hold)"
            )
        if not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ConfigError(
                f"hydra.sweeper.n_jobs={self.n_jobs!r} must be an integer >= 1 (parallel slots)"
            )
        if not 0.0 <= float(self.max_failure_rate) <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate!r} must be within [0, 1]"
            )
        if self.heartbeat_interval_s < 0 or self.heartbeat_grace_s < self.heartbeat_interval_s:
            raise ConfigError(
                f"hydra.sweeper.heartbeat_grace_s={self.heartbeat_grace_s} must be >= "
                f"heartbeat_interval_s={self.heartbeat_interval_s} >= 0"
            )
        self.directions = self._parse_directions(self.direction_cfg)
        self.pruner = self._build_pruner(self.pruner_cfg)

    @staticmethod
    def _parse_directions(direction: Any) -> list[str]:
        raw = list(direction) if isinstance(direction, list | tuple | Sequence) and not isinstance(
            direction, str
        ) else [direction]
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

    @staticmethod
    def _build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
        if isinstance(cfg, optuna.pruners.BasePruner):
            return cfg
        if cfg is None or cfg == "none":
            return optuna.pruners.NopPruner()
        if isinstance(cfg, str):
            table = {
                "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2,
                                                              n_warmup_steps=1),
                "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
                "hyperband": optuna.pruners.HyperbandPruner,
            }
            if cfg not in table:
                raise ConfigError(
                    f"hydra.sweeper.pruner={cfg!r} is unknown: use one of {', '.join(PRUNERS)} "
                    "or a config with a _target_"
                )
            return table[cfg]()
        return instantiate(cfg)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        # Launchers that run jobs in this process are not thread-safe (cwd, logging, Hydra
        # singletons): their slots take turns. Submitit launchers run each job elsewhere.
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        self._launch_lock = threading.Lock() if isinstance(self.launcher, BasicLauncher) else None
        if self.fast_inprocess and type(self.launcher) is BasicLauncher:
            from ._inprocess import InProcessJobs

            self._inprocess = InProcessJobs(self.launcher)

    # ------------------------------------------------------------------ search space
    def _search_space(self, arguments: list[str]) -> tuple[list[ParsedParam], list[str]]:
        """Parsed params (config ``params``, then the command line, which wins) + fixed ones."""
        by_name: dict[str, ParsedParam] = {}
        for p in parse_params([(str(k), str(v)) for k, v in self.params_cfg.items()]):
            by_name[p.name] = p
        for p in parse_params(list(arguments)):
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

    def _group_choices(self) -> dict[str, str]:
        assert self.config is not None
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default=None)
        if choices is None:
            return {}
        return {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra/")}

    def _param_specs(self, searched: list[ParsedParam]) -> list[ParamSpec]:
        assert self.config is not None and self.hydra_context is not None
        groups = self._group_choices()
        specs = []
        for p in searched:
            dist = p.distribution
            assert dist is not None
            if p.name in groups:
                options = self.hydra_context.config_loader.get_group_options(p.name)
                if isinstance(dist, CategoricalDistribution):
                    bad = [c for c in dist.choices if str(c) not in options]
                    if bad:
                        raise ConfigError(
                            f"{p.name}={bad[0]} is not an option of config group {p.name!r}: "
                            f"choose from {', '.join(options)}"
                        )
                default: Any = groups[p.name]
            else:
                default = OmegaConf.select(self.config, p.name, default=None,
                                           throw_on_resolution_failure=False)
                if isinstance(default, DictConfig | list) or OmegaConf.is_config(default):
                    default = None
            if default is not None and check_value(dist, default) is not None:
                clamped = clamp_value(dist, default)
                default = clamped if clamped is not None else None
            if default is not None and isinstance(dist, CategoricalDistribution):
                # group choices come back as strings; match the declared choice's type
                default = next((c for c in dist.choices if str(c) == str(default)), None)
            specs.append(
                ParamSpec(
                    name=p.name,
                    distribution=dist,
                    default=default,
                    description=str(self.descriptions.get(p.name, "")),
                )
            )
        return specs

    def _validation_points(self, specs: list[ParamSpec]) -> list[dict[str, Any]]:
        """Parameter values to compose the config with before anything runs.

        One point with every unconditional parameter; then, for each condition, a point where
        it holds, with the parameters it enables (e.g. model=cnn with model.net.channels), so
        every key is checked in a config where it exists.
        """
        rep = {s.name: _representative(s) for s in specs}
        base = {n: v for n, v in rep.items() if n not in self.conditions}
        points = [base]
        branches: dict[tuple[str, str], list[str]] = {}
        for param, (other, values) in self.conditions.items():
            for value in sorted(values):
                branches.setdefault((other, value), []).append(param)
        dists = {s.name: s.distribution for s in specs}
        for (other, value), params in branches.items():
            point = dict(base)
            choice = next((c for c in getattr(dists[other], "choices", ()) if str(c) == value),
                          value)
            point[other] = choice
            point.update({p: rep[p] for p in params})
            points.append(point)
        return points

    def _parse_conditions(self, specs: list[ParamSpec]) -> dict[str, tuple[str, set[str]]]:
        """``{param: "other=v1,v2"}`` -> ``{param: (other, {"v1", "v2"})}``, checked."""
        names = {s.name: s for s in specs}
        out: dict[str, tuple[str, set[str]]] = {}
        for param, cond in self.conditions_cfg.items():
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
            out[param] = (other, {v.strip() for v in values.split(",") if v.strip()})
        # tell the agents when a parameter applies
        for i, spec in enumerate(specs):
            if spec.name in out:
                other, values = out[spec.name]
                note = f"(only when {other} is {' or '.join(sorted(values))})"
                specs[i] = ParamSpec(name=spec.name, distribution=spec.distribution,
                                     default=spec.default,
                                     description=f"{spec.description} {note}".strip())
        return out

    def _trial_overrides(
        self, params: dict[str, Any], searched: list[ParsedParam], fixed: list[str]
    ) -> list[str]:
        keys = {p.name: p.key for p in searched}
        return [*fixed, *(f"{keys[n]}={format_value(v)}" for n, v in params.items() if n in keys)]

    def _validate_composition(self, overrides: list[str]) -> None:
        """Compose the config once with ``overrides``: bad paths/options fail before any trial."""
        try:
            self.validate_batch_is_legal([overrides])
        except Exception as exc:
            msg = str(exc).strip()
            first = msg.splitlines()[0] if msg else type(exc).__name__
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

    def _objective_names(self) -> list[str]:
        assert self.config is not None
        obj = OmegaConf.select(self.config, "objective", default=None)
        if obj is None:
            return [f"objective_{i}" for i in range(len(self.directions))] if len(
                self.directions
            ) > 1 else ["objective"]
        names = [str(o) for o in obj] if OmegaConf.is_list(obj) else [str(obj)]
        if len(names) != len(self.directions):
            raise ConfigError(
                f"objective={names} names {len(names)} metric(s) but hydra.sweeper.direction="
                f"{self.directions} has {len(self.directions)}: give one direction per metric"
            )
        return names

    # ------------------------------------------------------------------ sampler / storage
    def _build_sampler(
        self, specs: list[ParamSpec], objective_names: list[str]
    ) -> optuna.samplers.BaseSampler:
        assert self.config is not None
        if self.sampler_cfg is not None:
            return self._as_sampler(self.sampler_cfg, "sampler")
        fallback = self._build_fallback()
        agent = OmegaConf.select(self.config, "agent", default=None)
        if agent is None:
            return fallback
        try:
            from hpo.samplers import sampler_from_agent_config
        except ImportError:  # pragma: no cover - the LLM sampler is part of the package
            return fallback
        agent_d = OmegaConf.to_container(agent, resolve=True)
        assert isinstance(agent_d, dict)
        max_epochs = OmegaConf.select(self.config, "trainer.max_epochs", default=None)
        return sampler_from_agent_config(
            agent_d,
            search_space=specs,
            fallback=fallback,
            seed=self.seed,
            batch_size=self.n_jobs,
            n_trials=self.n_trials,
            dump_dir=Path(str(self.config.hydra.sweep.dir)) / "llm",
            objective_names=objective_names,
            sensitive=self._sensitive_names(specs),
            fidelity=f"up to {max_epochs} epochs per trial" if max_epochs else None,
        )

    def _sensitive_names(self, specs: list[ParamSpec]) -> dict[str, str]:
        """Names the prompts must not carry (anonymized): dataset, fixed model, study, paths."""
        from hpo.agents.history import Anonymizer

        searched = {s.name for s in specs}
        groups = self._group_choices()
        models = [groups["model"]] if "model" in groups and "model" not in searched else []
        return Anonymizer.from_names(
            dataset=groups.get("data") if "data" not in searched else None,
            models=models,
            study=self.study_name,
            paths=[str(Path.cwd())],
        ).mapping

    def _build_fallback(self) -> optuna.samplers.BaseSampler:
        if not self.fallback_cfg:
            return optuna.samplers.TPESampler(seed=self.seed)
        return self._as_sampler(self.fallback_cfg, "fallback_sampler")

    @staticmethod
    def _as_sampler(obj: Any, name: str) -> optuna.samplers.BaseSampler:
        # Hydra instantiates nested _target_ configs when it builds the sweeper
        if isinstance(obj, optuna.samplers.BaseSampler):
            return obj
        try:
            built = instantiate(obj)
        except Exception as exc:
            raise ConfigError(f"hydra.sweeper.{name} cannot be built: {_first_line(exc)}") from exc
        if not isinstance(built, optuna.samplers.BaseSampler):
            raise ConfigError(
                f"hydra.sweeper.{name} built {type(built).__name__}, not an Optuna sampler: "
                "give a config whose _target_ is a sampler class"
            )
        return built

    def _storage_url(self) -> str | None:
        url = self.storage_url
        if url and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = url[len("sqlite:///"):]
            if path and path != ":memory:":
                url = "sqlite:///" + str(Path(path).resolve())
        if url and url.startswith("journal://"):
            path = url[len("journal://"):]
            url = "journal://" + str(Path(path).resolve())
        return url

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        self._validate()
        searched, fixed = self._search_space(arguments)
        specs = self._param_specs(searched)
        self.conditions = self._parse_conditions(specs)
        objective_names = self._objective_names()
        distributions = {s.name: s.distribution for s in specs}
        for values in self._validation_points(specs):
            self._validate_composition(self._trial_overrides(values, searched, fixed))

        if self.dry_run:
            return self._dry_run(specs, searched, fixed, objective_names)

        # everything that can fail on bad input comes before the storage is opened
        sampler = self._build_sampler(specs, objective_names)
        self._check_sweep_dir()
        url = self._storage_url()
        storage = open_storage(url)
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=self.study_name,
                directions=self.directions,
                sampler=sampler,
                pruner=self.pruner,
                load_if_exists=True,
            )
        except Exception as exc:
            raise ConfigError(
                f"cannot create or load study {self.study_name!r} in {redact_url(url or 'memory')}"
                f": {_first_line(exc)}"
            ) from exc
        existing = [d.name.lower() for d in study.directions]
        if existing != self.directions:
            raise ConfigError(
                f"study {self.study_name!r} already exists with direction {existing}, not "
                f"{self.directions}: use another hydra.sweeper.study_name or the same direction"
            )
        self._check_distributions(study, distributions)
        if not study.user_attrs.get("hpo:search_space"):
            study.set_user_attr(
                "hpo:search_space", {p.name: p.distribution.__class__.__name__ for p in searched}
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(objective_names)

        # jobs find their trial through storage: the URL (may carry a password) through this
        # process's environment, inherited by every launcher; the trial number per job below
        if url is None or url == "memory" or isinstance(storage, optuna.storages.InMemoryStorage):
            key = f"memory:{id(storage)}"
            trial_context.register_live_storage(key, storage)
            os.environ[trial_context.ENV_STORAGE] = key
        else:
            os.environ[trial_context.ENV_STORAGE] = url
        os.environ[trial_context.ENV_STUDY] = self.study_name
        os.environ[trial_context.ENV_PRUNER] = trial_context.encode_pruner(self.pruner)

        self._recover_orphans(study)
        run = _SweepRun(self, study, sampler, searched, fixed, objective_names)
        return run.loop()

    def _check_sweep_dir(self) -> None:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=sweep_dir, prefix=".hpo-write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"hydra.sweep.dir={str(sweep_dir)!r} is not writable ({exc.strerror or exc}): "
                "point hydra.sweep.dir at a folder you can write"
            ) from exc

    def _check_distributions(
        self, study: optuna.Study, distributions: dict[str, BaseDistribution]
    ) -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            for name, dist in t.distributions.items():
                new = distributions.get(name)
                if new is not None and new != dist:
                    raise ConfigError(
                        f"parameter {name!r} is {dist} in study {self.study_name!r} but {new} "
                        "now: keep the search space of a study, or use a new "
                        "hydra.sweeper.study_name"
                    )
            break

    def _recover_orphans(self, study: optuna.Study) -> None:
        """Fail RUNNING trials left by a dead driver and re-run them within the budget.

        A trial names its driver (host:pid:start) as soon as it is asked; one killed before
        that is judged by the drivers registered on the study: when none of them can still be
        alive, it is an orphan too. Trials of drivers on other hosts go stale by heartbeat.
        """
        now = time.time()
        drivers = [d for d in study.user_attrs.get("hpo:drivers", []) if isinstance(d, str)]
        others_maybe_alive = any(_driver_alive(d) is not False for d in drivers)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            driver = t.user_attrs.get(A_DRIVER)
            alive = _driver_alive(driver) if isinstance(driver, str) else None
            beat = t.user_attrs.get(A_HEARTBEAT)
            started = t.datetime_start.timestamp() if t.datetime_start else now
            last = float(beat) if beat is not None else started
            stale = now - last > self.heartbeat_grace_s
            if driver is None and not others_maybe_alive:
                alive = False
            if alive is False or (alive is None and stale):
                reason = (
                    f"orphaned: driver {driver or 'of this study'} is gone" if alive is False
                    else f"orphaned: no heartbeat for {now - last:.0f} s"
                )
                self.fail_and_retry(study, t, reason)
        me = _driver_id()
        study.set_user_attr("hpo:drivers", [*drivers[-49:], me])

    def fail_and_retry(self, study: optuna.Study, t: FrozenTrial, reason: str) -> bool:
        """Tell ``t`` FAIL (an infrastructure failure) and enqueue it again if retries are left."""
        retries = int(t.user_attrs.get(A_RETRY_COUNT, 0))
        retry = retries < self.max_retries
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, A_ERROR, reason)
        if retry:
            storage.set_trial_user_attr(t._trial_id, A_RETRIED, True)
        with contextlib.suppress(Exception):  # it may have finished meanwhile
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if retry:
            attrs = {A_RETRY_OF: t.number, A_RETRY_COUNT: retries + 1}
            for k in ("hpo:source", "hpo:rationale"):
                if k in t.user_attrs:
                    attrs[k] = t.user_attrs[k]
            study.enqueue_trial(dict(t.params), user_attrs=attrs)
            log.warning("trial %d failed (%s): retrying it (%d/%d)", t.number, reason,
                        retries + 1, self.max_retries)
        else:
            log.warning("trial %d failed (%s); no retries left", t.number, reason)
        return retry

    def _dry_run(
        self,
        specs: list[ParamSpec],
        searched: list[ParsedParam],
        fixed: list[str],
        objective_names: list[str],
    ) -> list[list[str]]:
        """Plan the first batch on an in-memory copy: nothing is submitted or stored."""
        from hydra_plugins.hpo_sweeper._dryrun import describe_plan

        return describe_plan(self, specs, searched, fixed, objective_names)


class _SweepRun:
    """One run of the slot loop over a loaded study."""

    def __init__(
        self,
        sweeper: HPOSweeperImpl,
        study: optuna.Study,
        sampler: optuna.samplers.BaseSampler,
        searched: list[ParsedParam],
        fixed: list[str],
        objective_names: list[str],
    ) -> None:
        self.s = sweeper
        self.study = study
        self.sampler = sampler
        self.searched = searched
        self.fixed = fixed
        self.objective_names = objective_names
        self.driver = _driver_id()
        self.in_flight: dict[Future[list[JobReturn]], _Slot] = {}
        self.n_finished = 0
        self.n_failed = 0
        self.n_asked = 0
        self.distributions = {p.name: p.distribution for p in searched}
        self._budget_used = self._count_budget()
        self._beat_stop = threading.Event()
        self.progress = _make_progress(self)
        self.sampler_exhausted = False
        self._shared = False
        folds = OmegaConf.select(sweeper.config, "cv.folds", default=1) if sweeper.config else 1
        self.folds = int(folds or 1)
        if self.folds > 1:
            log.info("k-fold cross-validation: each trial runs as %d fold jobs", self.folds)

    def _other_drivers(self) -> bool:
        """Whether another driver (alive, or on another host) works on this study."""
        drivers = self.study.user_attrs.get("hpo:drivers", [])
        return any(
            d != self.driver and _driver_alive(d) is not False
            for d in drivers if isinstance(d, str)
        )

    def _count_budget(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        return sum(1 for t in trials if _counts_in_budget(t)) + sum(
            1 for t in trials if t.state == TrialState.RUNNING
        )

    def remaining(self) -> int:
        return self.s.n_trials - self._budget_used

    def loop(self) -> optuna.Study:
        s = self.s
        done_before = self._budget_used
        if self.remaining() <= 0:
            log.info(
                "study %r already holds %d of n_trials=%d trials: nothing to run "
                "(raise hydra.sweeper.n_trials to extend it)",
                s.study_name, done_before, s.n_trials,
            )
            self._summary()
            return self.study
        log.info(
            "study %r: %d/%d trials done, running %d more in %d slot(s); storage %s",
            s.study_name, done_before, s.n_trials, self.remaining(), s.n_jobs,
            redact_url(s.storage_url or "memory"),
        )
        beat = threading.Thread(target=self._heartbeats, name="hpo-heartbeat", daemon=True)
        beat.start()
        pool = ThreadPoolExecutor(max_workers=s.n_jobs, thread_name_prefix="hpo-slot")
        try:
            while True:
                self._fill_slots(pool)
                if not self.in_flight:
                    break
                done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
                for fut in done:
                    self._finish(fut, self.in_flight.pop(fut))
                self._check_failure_rate()
        except BaseException as exc:
            self._abandon(exc)
            raise
        finally:
            self._beat_stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.progress.close()
        self._summary()
        return self.study

    # ---------------------------------------------------------------- slots
    def _stop_reason(self) -> str | None:
        if self.sampler_exhausted:
            return f"{type(self.sampler).__name__} has covered its whole search space"
        if getattr(self.sampler, "stop_requested", False):
            reason = getattr(self.sampler, "stop_reason", None)
            return "the planner asked to stop" + (f": {reason}" if reason else "")
        return None

    def _fill_slots(self, pool: ThreadPoolExecutor) -> None:
        while len(self.in_flight) < self.s.n_jobs and self.remaining() > 0:
            if self._stop_reason():
                return
            if self.n_asked % 10 == 0:
                self._shared = self._other_drivers()
            if self._shared or self.n_asked % 10 == 0 or self.remaining() <= 2 * self.s.n_jobs:
                # the budget is the study's: with other drivers on it, re-count before each ask
                self._budget_used = self._count_budget()
                if self.remaining() <= 0:
                    return
            trial = self._ask()
            self._budget_used += 1
            self.n_asked += 1
            if self._stop_reason() and trial.user_attrs.get("hpo:source") == "fallback":
                # the planner said stop while proposing this one: do not run it; it does not
                # count in the budget
                storage = self.study._storage
                storage.set_trial_user_attr(trial._trial_id, A_ERROR, "not run: " + (
                    self._stop_reason() or "stop"))
                storage.set_trial_user_attr(trial._trial_id, A_RETRIED, True)
                self.study.tell(trial, state=TrialState.FAIL)
                self._budget_used -= 1
                return
            overrides = self.s._trial_overrides(trial.params, self.searched, self.fixed)
            # the trial's datetime_start is its first heartbeat (see _recover_orphans)
            trial.set_user_attr(A_DRIVER, self.driver)
            trial.set_user_attr(A_OVERRIDES, overrides)
            job = [
                *overrides,
                f"++hydra.job.env_set.{trial_context.ENV_TRIAL_NUMBER}={trial.number}",
                f"++hydra.job.env_set.{trial_context.ENV_TRIAL_ID}={trial._trial_id}",
            ]
            slot = _Slot(trial=trial, overrides=overrides)
            # every fold job reports to the trial: its own per-class scores and curves
            jobs = [job] if self.folds <= 1 else [
                [*job, f"cv.fold={i}", f"hydra.sweep.subdir=trial_{trial.number}/fold_{i}"]
                for i in range(self.folds)
            ]
            self.in_flight[pool.submit(self._launch, jobs, trial.number)] = slot
            log.debug("trial %d started: %s", trial.number, " ".join(overrides))
            self.progress.trial_started(trial.number, dict(trial.params))

    def _ask(self) -> optuna.Trial:
        conditions = self.s.conditions
        if not conditions:
            return self.study.ask(self.distributions)
        # define-by-run: a conditional parameter is suggested only when its condition holds
        trial = self.study.ask()
        pending = dict(self.distributions)
        while pending:
            progressed = False
            for name, dist in list(pending.items()):
                cond = conditions.get(name)
                if cond is not None:
                    other, values = cond
                    if other not in trial.params:
                        if other in pending:
                            continue  # decide after the parameter it depends on
                        del pending[name]  # depends on an inactive parameter: inactive
                        progressed = True
                        continue
                    if str(trial.params[other]) not in values:
                        del pending[name]
                        progressed = True
                        continue
                _suggest(trial, name, dist)
                del pending[name]
                progressed = True
            if not progressed:  # a cycle of conditions: nothing more can be decided
                break
        return trial

    def _launch(self, jobs: list[list[str]], number: int) -> list[JobReturn]:
        launcher = self.s.launcher
        assert launcher is not None
        lock = self.s._launch_lock
        with lock if lock is not None else contextlib.nullcontext():
            if self.s._inprocess is not None:  # in-process: compose once per structure
                return self.s._inprocess.launch(jobs, number)
            # k-fold CV: the K fold jobs of a trial go in one call (a job array on SLURM)
            return list(launcher.launch(jobs, initial_job_idx=number))

    def _heartbeats(self) -> None:
        interval = self.s.heartbeat_interval_s
        if interval <= 0:
            return
        storage = self.study._storage
        while not self._beat_stop.wait(interval):
            for slot in list(self.in_flight.values()):
                with contextlib.suppress(Exception):
                    storage.set_trial_user_attr(slot.trial._trial_id, A_HEARTBEAT, time.time())

    # ---------------------------------------------------------------- tells
    def _finish(self, fut: Future[list[JobReturn]], slot: _Slot) -> None:
        try:
            self._tell(fut, slot)
        finally:
            frozen = self.study._storage.get_trial(slot.trial._trial_id)
            self.progress.trial_finished(frozen)

    def _tell(self, fut: Future[list[JobReturn]], slot: _Slot) -> None:
        trial = slot.trial
        storage = self.study._storage
        try:
            rets = fut.result()
        except Exception as exc:  # the launcher could not run the job (killed, rejected, lost)
            rejected = _rejection(exc)
            if rejected is not None:  # the cluster refuses the job itself: stop, do not retry
                storage.set_trial_user_attr(trial._trial_id, A_ERROR, str(rejected))
                self.study.tell(trial, state=TrialState.FAIL)
                raise rejected from exc
            frozen = storage.get_trial(trial._trial_id)
            reason = f"job lost: {_lost_reason(exc) or _first_line(exc)}"
            if self.s.fail_and_retry(self.study, frozen, reason):
                self._budget_used -= 1  # the retry takes this trial's place in the budget
            self.n_failed += 1
            self.n_finished += 1
            return
        ret = self._combine_folds(trial, rets) if len(rets) > 1 else rets[0]
        if ret.hydra_cfg is not None:
            out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None)
            job_id = OmegaConf.select(ret.hydra_cfg, "hydra.job.id", default=None)
            if out:
                storage.set_trial_user_attr(trial._trial_id, A_OUTPUT_DIR, str(out))
                _upload_artifacts(self.study, trial._trial_id, Path(str(out)),
                                  self.s._storage_url())
            if job_id and not str(job_id).startswith("job_id_for_"):
                storage.set_trial_user_attr(trial._trial_id, A_JOB_ID, str(job_id))
        self.n_finished += 1
        elapsed = time.monotonic() - slot.started
        if ret.status == JobStatus.COMPLETED:
            values, error = self._values(ret._return_value)
            if error is None:
                self._tell_study(trial, values)
                log.info("trial %d finished in %.1f s: %s", trial.number, elapsed,
                         ", ".join(f"{n}={v:.6g}" for n, v in zip(self.objective_names, values,
                                                                   strict=True)))
                return
        else:
            exc = ret._return_value
            if isinstance(exc, optuna.TrialPruned):
                storage.set_trial_user_attr(trial._trial_id, "hpo:pruned", str(exc)[:300])
                self._tell_study(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned after %.1f s: %s", trial.number, elapsed, exc)
                return
            error = _first_line(exc) if isinstance(exc, BaseException) else str(exc)
        storage.set_trial_user_attr(trial._trial_id, A_ERROR, error)
        self._tell_study(trial, state=TrialState.FAIL)
        self.n_failed += 1
        log.warning("trial %d failed after %.1f s: %s", trial.number, elapsed, error)

    def _tell_study(self, trial: optuna.Trial, values: Any = None, *,
                    state: TrialState | None = None) -> None:
        try:
            self.study.tell(trial, values, state=state)
        except RuntimeError as exc:
            # a sampler that has covered its space (GridSampler, BruteForceSampler) calls
            # study.stop(), which only works inside study.optimize; the tell itself is stored
            if "stop" not in str(exc).lower():
                raise
            self.sampler_exhausted = True

    def _combine_folds(self, trial: optuna.Trial, rets: list[JobReturn]) -> JobReturn:
        """One result for a trial run as K fold jobs: the mean; per-fold values in attrs."""
        for r in rets:
            if r.status != JobStatus.COMPLETED:
                return r
        per_fold = []
        for r in rets:
            values, error = self._values(r._return_value)
            if error is not None:
                return r
            per_fold.append(values)
        n = len(per_fold)
        means = [sum(v[i] for v in per_fold) / n for i in range(len(per_fold[0]))]
        stds = [
            math.sqrt(sum((v[i] - means[i]) ** 2 for v in per_fold) / max(n - 1, 1))
            for i in range(len(means))
        ]
        single = len(means) == 1
        storage = self.study._storage
        storage.set_trial_user_attr(
            trial._trial_id, "folds", [v[0] for v in per_fold] if single else per_fold
        )
        storage.set_trial_user_attr(trial._trial_id, "fold_std", stds[0] if single else stds)
        first = rets[0]
        return JobReturn(
            overrides=first.overrides, cfg=first.cfg, hydra_cfg=first.hydra_cfg,
            working_dir=first.working_dir, task_name=first.task_name,
            status=JobStatus.COMPLETED, _return_value=means[0] if single else means,
        )

    def _values(self, value: Any) -> tuple[list[float], str | None]:
        n = len(self.s.directions)
        raw = list(value) if isinstance(value, list | tuple) else [value]
        if OmegaConf.is_list(value):
            raw = list(value)
        if len(raw) != n:
            return [], (
                f"the task returned {value!r}: expected {n} number(s), one per direction"
            )
        out = []
        for v in raw:
            try:
                f = float(v)
            except (TypeError, ValueError):
                return [], f"the task returned {v!r}, not a number"
            if not math.isfinite(f):
                return [], f"objective is {f} (not finite)"
            out.append(f)
        return out, None

    def _check_failure_rate(self) -> None:
        if self.n_finished < min(3, self.s.n_trials) or self.n_failed == 0:
            return
        rate = self.n_failed / self.n_finished
        if rate > self.s.max_failure_rate:
            where = self.s.config.hydra.sweep.dir if self.s.config is not None else "outputs/"
            raise FailureRateExceeded(
                f"{self.n_failed} of {self.n_finished} trials failed (rate {rate:.2f} > "
                f"hydra.sweeper.max_failure_rate={self.s.max_failure_rate}): stopping; see the "
                f"trials' '{A_ERROR}' attribute and their logs under {where}"
            )

    def _abandon(self, exc: BaseException) -> None:
        """The driver is stopping with trials in flight: fail them and queue their re-runs."""
        for fut, slot in list(self.in_flight.items()):
            fut.cancel()
            with contextlib.suppress(Exception):
                frozen = self.study._storage.get_trial(slot.trial._trial_id)
                if frozen.state == TrialState.RUNNING:
                    reason = f"driver stopped: {_first_line(exc)}"
                    self.s.fail_and_retry(self.study, frozen, reason)
        self.in_flight.clear()

    def _summary(self) -> None:
        reason = self._stop_reason()
        if reason:
            log.warning("sweep stopped early: %s", reason)
        try:
            if len(self.s.directions) == 1:
                best = self.study.best_trial
                log.info("best trial %d: %s=%.6g with %s", best.number, self.objective_names[0],
                         best.value, best.params)
            else:
                front = self.study.best_trials
                log.info("Pareto front: %d trial(s): %s", len(front), [t.number for t in front])
        except ValueError:
            log.info("no completed trial yet")
        if self.s.storage_url and self.s.storage_url != "memory":
            url = redact_url(self.s._storage_url() or "")
            log.info("inspect: python -m hpo.dashboard --storage %s   (report: python -m "
                     "hpo.report --storage %s --study %s --out report/)", url, url,
                     self.s.study_name)



def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> None:
    if isinstance(dist, FloatDistribution):
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    else:
        assert isinstance(dist, CategoricalDistribution)
        trial.suggest_categorical(name, dist.choices)


class _NoProgress:
    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        pass

    def trial_finished(self, frozen: FrozenTrial) -> None:
        log.info("trial %d %s: %s", frozen.number, frozen.state.name.lower(),
                 frozen.values if frozen.values else frozen.user_attrs.get(A_ERROR, ""))

    def close(self) -> None:
        pass


def _make_progress(run: _SweepRun) -> Any:
    try:
        from hpo.progress import SweepProgress
    except ImportError:
        return _NoProgress()
    return SweepProgress(
        study=run.study, n_trials=run.s.n_trials, n_jobs=run.s.n_jobs,
        objective_names=run.objective_names, enabled=run.s.progress,
    )


def _upload_artifacts(study: optuna.Study, trial_id: int, out: Path, url: str | None) -> None:
    try:
        from hpo.artifacts import upload_trial_artifacts
    except ImportError:
        return
    try:
        upload_trial_artifacts(study, trial_id, out, url)
    except Exception as exc:  # artifacts are copies: never fail a trial over them
        log.warning("could not upload the artifacts of %s: %s", out, _first_line(exc))


def _lost_reason(exc: BaseException) -> str | None:
    try:
        from hydra_plugins.hpo_sweeper._slurm import lost_job_reason
    except ImportError:
        return None
    return lost_job_reason(exc)


def _rejection(exc: BaseException) -> Exception | None:
    """A ConfigError when the cluster rejected the job's resources; None otherwise."""
    try:
        from hydra_plugins.hpo_sweeper._slurm import rejection_error
    except ImportError:
        return None
    return rejection_error(exc)
