"""The classical optimizer that leads a ``hybrid`` study, and the CMA-ES that learns from all.

Optuna's ``CmaEsSampler`` learns only from the trials of its own generations (it keys them by
system attrs), so the LLM's trials would be ignored. :class:`CmaLeader` instead replays the
study's finished trials from storage, in completion order, into a ``cmaes.CMA`` and samples
from it: every finished trial teaches it, whoever proposed it, and a restarted driver rebuilds
exactly the same state (no side files). Trials the distribution did not produce are told as
Hansen's injected solutions: their step is clipped to a Mahalanobis length of
``sqrt(n) + 2n/(n+2)``, so one far-off proposal cannot blow the distribution up.

Numeric parameters are searched on the unit cube of their internal scale (log parameters in log
space, integers and stepped floats widened by half a step); categorical and conditional ones
are delegated to the independent sampler (TPE by default).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from cmaes import CMA
from optuna.distributions import (
    BaseDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, GPSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from hpo.space import ParamSpec, check_value

__all__ = ["LEADERS", "CmaLeader", "CmaSnapshot", "UnitScale", "build_leader", "pick_leader"]

_logger = logging.getLogger(__name__)

LEADERS = ("auto", "cmaes", "tpe", "gp")


@dataclass(frozen=True)
class UnitScale:
    """Maps one numeric parameter to [0, 1] of its internal scale and back.

    Attributes:
        name: The parameter.
        dist: Its distribution.
        lo: The internal low end (log of the low bound for log parameters, widened by half a
            step for integers and stepped floats).
        hi: The internal high end.
    """

    name: str
    dist: FloatDistribution | IntDistribution
    lo: float
    hi: float

    @classmethod
    def of(cls, name: str, dist: FloatDistribution | IntDistribution) -> UnitScale:
        """The scale of ``dist``."""
        half = 0.0
        if isinstance(dist, IntDistribution) or dist.step is not None:
            half = 0.5 * float(dist.step or 1)
        lo, hi = float(dist.low) - half, float(dist.high) + half
        if dist.log:
            lo, hi = math.log(max(lo, float(dist.low) * 0.5)), math.log(hi)
        return cls(name, dist, lo, hi)

    @property
    def log(self) -> bool:
        """Whether the parameter is searched in log space."""
        return bool(self.dist.log)

    def to_unit(self, value: float) -> float:
        """``value`` on [0, 1] (values outside the bounds map outside)."""
        v = math.log(value) if self.log else float(value)
        return (v - self.lo) / (self.hi - self.lo)

    def internal_span(self) -> float:
        """The width of the internal scale (natural log units for log parameters)."""
        return self.hi - self.lo

    def from_unit(self, u: float) -> float | int:
        """The valid parameter value nearest to unit coordinate ``u``."""
        v = self.lo + min(max(u, 0.0), 1.0) * (self.hi - self.lo)
        if self.log:
            v = math.exp(v)
        d = self.dist
        if isinstance(d, IntDistribution):
            k = round((v - d.low) / d.step)
            return int(min(max(d.low + k * d.step, d.low), d.high))
        if d.step is not None:
            k = round((v - d.low) / d.step)
            return float(min(max(d.low + k * d.step, d.low), d.high))
        return float(min(max(v, d.low), d.high))


@dataclass(frozen=True)
class CmaSnapshot:
    """The replayed CMA-ES state, in unit coordinates.

    Attributes:
        scales: One per dimension.
        mean: The distribution's mean.
        sigma: The step size.
        cov: The covariance matrix ``C`` (the distribution is ``N(mean, sigma^2 C)``).
        generation: Generations told.
        population: The population size.
        n_told: Finished trials told, whole generations.
        n_waiting: Finished trials waiting for the next generation to fill.
        sigma0: The initial step size.
    """

    scales: tuple[UnitScale, ...]
    mean: np.ndarray
    sigma: float
    cov: np.ndarray
    generation: int
    population: int
    n_told: int
    n_waiting: int
    sigma0: float


@dataclass
class _Replay:
    names: tuple[str, ...]
    cma: CMA
    consumed: list[int] = field(default_factory=list)  # trial ids, in the order told
    buffer: list[tuple[np.ndarray, float]] = field(default_factory=list)
    n_told: int = 0


class CmaLeader(BaseSampler):
    """CMA-ES over the numeric parameters, rebuilt from every finished trial in storage.

    Args:
        search_space: The search space; None: the numeric parameters every finished trial
            shares (define-by-run).
        seed: Seeds the draws (each trial's draw depends only on the seed and its number).
        independent_sampler: Samples what CMA-ES does not: categorical and conditional
            parameters, multi-objective studies. ``TPESampler(seed=seed)`` by default.
        sigma0: Initial step size on the unit cube (default 1/6, as Optuna's CMA-ES).
        population_size: CMA-ES's population (default ``4 + 3 ln(n)``).

    Raises:
        ValueError: On an invalid argument.
    """

    def __init__(
        self,
        *,
        search_space: Sequence[ParamSpec] | None = None,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        sigma0: float = 1.0 / 6.0,
        population_size: int | None = None,
    ) -> None:
        if not isinstance(sigma0, int | float) or isinstance(sigma0, bool) or not 0 < sigma0 <= 1:
            raise ValueError(
                f"sigma0={sigma0!r} is invalid: pass a step size in (0, 1] of the unit cube, "
                "e.g. 0.2."
            )
        if population_size is not None and (
            isinstance(population_size, bool)
            or not isinstance(population_size, int)
            or population_size < 2
        ):
            raise ValueError(
                f"population_size={population_size!r} is invalid: pass an integer >= 2, or "
                "None for CMA-ES's default."
            )
        if independent_sampler is not None and not isinstance(independent_sampler, BaseSampler):
            raise ValueError(
                f"independent_sampler={independent_sampler!r} is not an Optuna sampler: pass "
                "e.g. optuna.samplers.TPESampler()."
            )
        self._specs = list(search_space) if search_space is not None else None
        self._seed = seed
        self._salt = seed if seed is not None else int.from_bytes(np.random.bytes(4), "big")
        self._independent = independent_sampler or TPESampler(seed=seed)
        self._sigma0 = float(sigma0)
        self._popsize = population_size
        self._lock = threading.RLock()
        self._replays: dict[tuple[int, int], _Replay] = {}
        self._intersections: dict[tuple[int, int], IntersectionSearchSpace] = {}
        self._draws: dict[int, int] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ BaseSampler

    @property
    def independent_sampler(self) -> BaseSampler:
        """The sampler of the categorical and conditional parameters."""
        return self._independent

    def set_search_space(self, specs: Sequence[ParamSpec] | None) -> None:
        """Replace the search space (None: define-by-run)."""
        with self._lock:
            self._specs = list(specs) if specs is not None else None
            self._replays.clear()

    def reseed_rng(self) -> None:
        """Reseeds the independent sampler (CMA-ES's draws depend only on seed and trial)."""
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The numeric, unconditional, non-constant parameters."""
        return self._numeric_space(study)

    def _numeric_space(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        if self._specs is not None:
            space = {
                s.name: s.distribution for s in self._specs if s.condition is None
            }
        else:
            with self._lock:
                key = (id(study._storage), study._study_id)
                calc = self._intersections.setdefault(key, IntersectionSearchSpace())
                space = calc.calculate(study)
        return {
            name: dist
            for name, dist in space.items()
            if isinstance(dist, FloatDistribution | IntDistribution) and not dist.single()
        }

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        """CMA-ES's draw for the numeric parameters; the independent sampler for the rest."""
        numeric = {
            n: d for n, d in search_space.items()
            if isinstance(d, FloatDistribution | IntDistribution) and not d.single()
        }
        params: dict[str, Any] = {}
        if numeric and len(study.directions) == 1:
            with self._lock:
                replay = self._replay(study, numeric)
                k = self._draws.get(trial.number, 0)
                self._draws[trial.number] = k + 1
                if len(self._draws) > 4096:
                    self._draws.pop(next(iter(self._draws)))
                x = self._ask(replay, trial.number, k)
            params = {
                s.name: s.from_unit(float(u)) for s, u in zip(_scales(numeric), x, strict=True)
            }
        elif numeric and self._first("multi"):
            _logger.info(
                "CmaLeader: CMA-ES is single-objective; this study has %d objectives, so %s "
                "samples every parameter.",
                len(study.directions),
                type(self._independent).__name__,
            )
        for name, dist in search_space.items():
            if name not in params:
                params[name] = self._independent.sample_independent(study, trial, name, dist)
        return params

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Delegates to the independent sampler."""
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Forwards to the independent sampler."""
        self._independent.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Forwards to the independent sampler."""
        self._independent.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------ for the LLM's prompt

    def snapshot(
        self, study: optuna.Study, search_space: dict[str, BaseDistribution]
    ) -> CmaSnapshot | None:
        """The state CMA-ES has learned from the finished trials (None: nothing to learn)."""
        numeric = {
            n: d for n, d in search_space.items()
            if n in self._numeric_space(study)
        }
        if not numeric or len(study.directions) != 1:
            return None
        with self._lock:
            r = self._replay(study, numeric)
            return CmaSnapshot(
                scales=_scales(numeric),
                mean=r.cma.mean.copy(),
                sigma=float(r.cma._sigma),
                cov=np.array(r.cma._C, copy=True),
                generation=r.cma.generation,
                population=r.cma.population_size,
                n_told=r.n_told,
                n_waiting=len(r.buffer),
                sigma0=self._sigma0,
            )

    def candidates(
        self,
        study: optuna.Study,
        search_space: dict[str, BaseDistribution],
        k: int,
        number: int,
    ) -> list[dict[str, Any]]:
        """``k`` draws of the current distribution for the numeric parameters (deterministic
        given the seed, the history and ``number``); empty when CMA-ES has no part."""
        numeric = {
            n: d for n, d in search_space.items()
            if n in self._numeric_space(study)
        }
        if not numeric or len(study.directions) != 1:
            return []
        scales = _scales(numeric)
        with self._lock:
            r = self._replay(study, numeric)
            out = []
            for i in range(k):
                x = self._ask(r, number, 1000 + i)
                out.append({s.name: s.from_unit(float(u)) for s, u in zip(scales, x, strict=True)})
        return out

    # ------------------------------------------------------------------ the replay

    def _ask(self, replay: _Replay, number: int, k: int) -> np.ndarray:
        digest = hashlib.blake2b(f"{self._salt}:{number}:{k}".encode(), digest_size=4).digest()
        replay.cma.reseed_rng(int.from_bytes(digest, "big"))
        return replay.cma.ask()

    def _replay(self, study: optuna.Study, numeric: Mapping[str, BaseDistribution]) -> _Replay:
        """The CMA state after every usable finished trial, extended from the cached one when
        the history only grew."""
        scales = _scales(numeric)
        names = tuple(s.name for s in scales)
        ordered = _usable(study.get_trials(deepcopy=False), numeric)
        key = (id(study._storage), study._study_id)
        replay = self._replays.get(key)
        if (
            replay is None
            or replay.names != names
            or [t._trial_id for t in ordered[: len(replay.consumed)]] != replay.consumed
        ):
            replay = self._replays[key] = _Replay(names=names, cma=self._new_cma(scales))
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
        for t in ordered[len(replay.consumed):]:
            x = np.array([s.to_unit(float(t.params[s.name])) for s in scales])
            replay.buffer.append((x, sign * float(t.values[0])))
            replay.consumed.append(t._trial_id)
            if len(replay.buffer) == replay.cma.population_size:
                _tell_injected(replay.cma, replay.buffer)
                replay.n_told += len(replay.buffer)
                replay.buffer = []
        return replay

    def _new_cma(self, scales: tuple[UnitScale, ...]) -> CMA:
        n = len(scales)
        bounds = np.array([[0.0, 1.0]] * n)
        return CMA(
            mean=np.full(n, 0.5),
            sigma=self._sigma0,
            bounds=bounds,
            seed=self._salt % (2**31),
            population_size=self._popsize,
        )

    def _first(self, key: str) -> bool:
        if key in self._warned:
            return False
        self._warned.add(key)
        return True


def _scales(numeric: Mapping[str, BaseDistribution]) -> tuple[UnitScale, ...]:
    return tuple(
        UnitScale.of(name, dist)  # type: ignore[arg-type]
        for name, dist in sorted(numeric.items())
    )


def _usable(trials: Sequence[FrozenTrial], numeric: Mapping[str, BaseDistribution]) -> list[
    FrozenTrial
]:
    """Complete trials with a finite value and every numeric parameter inside its bounds,
    in completion order."""
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE or t.values is None or len(t.values) != 1:
            continue
        if not math.isfinite(float(t.values[0])):
            continue
        ok = True
        for name, dist in numeric.items():
            v = t.params.get(name)
            if v is None or check_value(dist, v) is not None:
                ok = False
                break
        if ok:
            out.append(t)
    out.sort(key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    return out


def _tell_injected(cma: CMA, solutions: list[tuple[np.ndarray, float]]) -> None:
    """Tell a generation whose members may come from elsewhere (the LLM, TPE, the baseline):
    each step from the mean is clipped to Mahalanobis length sqrt(n) + 2n/(n+2) (Hansen 2011,
    "Injecting external solutions into CMA-ES")."""
    n = cma.dim
    cap = math.sqrt(n) + 2.0 * n / (n + 2.0)
    # the cmaes package exposes no getter for the step size and covariance
    mean, sigma = cma.mean, float(cma._sigma)
    d2, b = np.linalg.eigh((cma._C + cma._C.T) / 2.0)
    inv_sqrt = b @ np.diag(1.0 / np.sqrt(np.maximum(d2, 1e-30))) @ b.T
    told = []
    for x, value in solutions:
        y = (x - mean) / sigma
        length = float(np.linalg.norm(inv_sqrt @ y))
        if length > cap:
            y = y * (cap / length)
        told.append((mean + sigma * y, value))
    cma.tell(told)


def pick_leader(specs: Sequence[ParamSpec] | None, directions: int = 1) -> str:
    """``auto``'s choice: CMA-ES when unconditional numeric parameters are at least as many as
    the categorical and conditional ones, else TPE (and TPE without a known space)."""
    if specs is None or directions != 1:
        return "tpe"
    numeric = sum(
        1 for s in specs
        if s.condition is None
        and isinstance(s.distribution, FloatDistribution | IntDistribution)
        and not s.distribution.single()
    )
    others = sum(1 for s in specs if not s.distribution.single()) - numeric
    return "cmaes" if numeric >= 1 and numeric >= others else "tpe"


def build_leader(
    name: str,
    *,
    search_space: Sequence[ParamSpec] | None,
    seed: int | None,
    fallback: BaseSampler | None,
) -> tuple[str, BaseSampler]:
    """The leader of a hybrid study and its resolved name.

    Args:
        name: ``auto``, ``cmaes``, ``tpe`` or ``gp``.
        search_space: The search space (``auto`` reads it).
        seed: The seed of the leader.
        fallback: The sweep's classical sampler: CMA-ES's and GP's independent sampler, and
            the TPE leader itself when it is a TPE sampler.

    Raises:
        ValueError: An unknown name.
    """
    key = str(name).strip().lower()
    if key not in LEADERS:
        raise ValueError(f"leader={name!r} is unknown: use one of {', '.join(LEADERS)}")
    if key == "auto":
        key = pick_leader(search_space)
    independent = fallback if fallback is not None else TPESampler(seed=seed)
    if key == "cmaes":
        return key, CmaLeader(search_space=search_space, seed=seed,
                              independent_sampler=independent)
    if key == "gp":
        return key, GPSampler(seed=seed, independent_sampler=independent)
    if isinstance(independent, TPESampler):
        return key, independent
    return key, TPESampler(seed=seed)
