"""Hybrid mode: the CMA-ES leader rebuilt from storage, the optimizer state shown to the LLM,
the LLM ranking the leader's candidates; Optuna's conformance suites for the leader and for
LLMSampler in hybrid mode (with the real chain against the fake LLM server, and without).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, TPESampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

from _sampler_env import (  # noqa: F401 (the fixtures)
    RecordingChain,
    llm_env_fixture,
    make_chain,
    server_fixture,
)
from hpo.samplers import CmaLeader, LLMSampler
from hpo.samplers._leader import UnitScale, build_leader, pick_leader
from hpo.samplers._state import describe_state, importances
from hpo.space import ParamSpec, check_value
from hpo.testing import FakeLLMServer

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = [
    ParamSpec("lr", FloatDistribution(1e-4, 1e-1, log=True), default=1e-3),
    ParamSpec("width", IntDistribution(8, 256, log=True), default=64),
    ParamSpec("drop", FloatDistribution(0.0, 0.5, step=0.05), default=0.1),
    ParamSpec("act", CategoricalDistribution(["relu", "gelu", "tanh"]), default="relu"),
]
DISTS: dict[str, BaseDistribution] = {s.name: s.distribution for s in SPACE}
NUMERIC = {n: d for n, d in DISTS.items() if n != "act"}


def loss(p: dict[str, Any]) -> float:
    return (
        (math.log10(p["lr"]) + 2.2) ** 2
        + (math.log2(p["width"]) - 6) ** 2 / 4
        + (p["drop"] - 0.2) ** 2
        + {"relu": 0.3, "gelu": 0.0, "tanh": 0.6}[p["act"]]
    )


def history(study: optuna.Study, points: list[dict[str, Any]], source: str = "leader") -> None:
    for p in points:
        study.add_trial(
            optuna.create_trial(
                params=p, distributions=DISTS, value=loss(p), user_attrs={"hpo:source": source}
            )
        )


def random_points(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "lr": float(10 ** rng.uniform(-4, -1)),
            "width": int(2 ** rng.integers(3, 9)),
            "drop": round(float(rng.integers(0, 11)) * 0.05, 2),
            "act": str(rng.choice(["relu", "gelu", "tanh"])),
        }
        for _ in range(n)
    ]






# --------------------------------------------------------------------------- the replay


def test_same_history_gives_the_same_state(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'h.db'}"
    study = optuna.create_study(storage=storage, study_name="h")
    history(study, random_points(20, seed=1))
    a = CmaLeader(search_space=SPACE, seed=3).snapshot(study, DISTS)
    # a restarted driver: a new leader on the storage re-read from disk
    reloaded = optuna.load_study(study_name="h", storage=storage)
    b = CmaLeader(search_space=SPACE, seed=3).snapshot(reloaded, DISTS)
    assert a is not None and b is not None
    assert a.generation == b.generation == 20 // a.population
    assert a.n_told + a.n_waiting == 20
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.cov, b.cov)
    assert a.sigma == b.sigma
    assert [s.name for s in a.scales] == ["drop", "lr", "width"]  # categoricals are delegated


def test_the_cached_replay_equals_a_fresh_one() -> None:
    study = optuna.create_study()
    points = random_points(30, seed=2)
    history(study, points[:10])
    leader = CmaLeader(search_space=SPACE, seed=0)
    leader.snapshot(study, DISTS)  # cache the state after 10 trials
    history(study, points[10:])
    grown = leader.snapshot(study, DISTS)
    fresh = CmaLeader(search_space=SPACE, seed=0).snapshot(study, DISTS)
    assert grown is not None and fresh is not None
    np.testing.assert_allclose(grown.mean, fresh.mean)
    np.testing.assert_allclose(grown.cov, fresh.cov)
    assert grown.sigma == pytest.approx(fresh.sigma)


def test_llm_trials_change_the_state() -> None:
    base = random_points(12, seed=3)
    good = [
        {"lr": 10 ** (-2.2 + d), "width": 64, "drop": 0.2, "act": "gelu"}
        for d in (-0.05, 0.0, 0.05, 0.1, -0.1, 0.02)
    ]
    without = optuna.create_study()
    history(without, base)
    with_llm = optuna.create_study()
    history(with_llm, base)
    history(with_llm, good, source="llm")  # six good trials proposed by the LLM
    history(without, random_points(6, seed=4))  # six more leader trials instead
    a = CmaLeader(search_space=SPACE, seed=0, population_size=6).snapshot(without, DISTS)
    b = CmaLeader(search_space=SPACE, seed=0, population_size=6).snapshot(with_llm, DISTS)
    assert a is not None and b is not None
    assert a.generation == b.generation == 3
    assert not np.allclose(a.mean, b.mean)
    # the LLM's good trials pulled the mean towards them (lr at 10^-2.2)
    lr = [s.name for s in b.scales].index("lr")
    target = b.scales[lr].to_unit(10**-2.2)
    assert abs(b.mean[lr] - target) < abs(a.mean[lr] - target)


def test_far_off_trials_are_clipped_when_told() -> None:
    """One absurd corner among good trials cannot blow the distribution up."""
    study = optuna.create_study()
    history(study, random_points(6, seed=5))
    calm = CmaLeader(search_space=SPACE, seed=0, population_size=6).snapshot(study, DISTS)
    corner = {"lr": 1e-1, "width": 256, "drop": 0.5, "act": "tanh"}
    history(study, [corner] * 6, source="llm")
    hit = CmaLeader(search_space=SPACE, seed=0, population_size=6).snapshot(study, DISTS)
    assert calm is not None and hit is not None
    assert hit.generation == 2
    assert hit.sigma < 3 * calm.sigma
    assert np.all(np.isfinite(hit.cov))


def test_draws_are_deterministic_per_trial_number() -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=CmaLeader(search_space=SPACE, seed=seed))
        study.optimize(lambda t: loss({n: _suggest(t, n, d) for n, d in DISTS.items()}), 15)
        return [t.params for t in study.trials]

    assert run(1) == run(1)
    assert run(1) != run(2)


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)


def test_unit_scale_round_trips_onto_valid_values() -> None:
    for name, dist in NUMERIC.items():
        scale = UnitScale.of(name, dist)  # type: ignore[arg-type]
        for u in (-0.3, 0.0, 0.37, 0.5, 1.0, 1.4):
            v = scale.from_unit(u)
            assert check_value(dist, v) is None, (name, u, v)
        mid = scale.from_unit(0.5)
        assert scale.from_unit(scale.to_unit(float(mid))) == mid


def test_pick_and_build_leaders() -> None:
    assert pick_leader(SPACE) == "cmaes"
    cats = [ParamSpec(f"c{i}", CategoricalDistribution(["a", "b"])) for i in range(4)]
    assert pick_leader([SPACE[0], *cats]) == "tpe"
    assert pick_leader(None) == "tpe"
    tpe = TPESampler(seed=0)
    name, leader = build_leader("auto", search_space=[SPACE[0], *cats], seed=0, fallback=tpe)
    assert name == "tpe" and leader is tpe
    name, leader = build_leader("cmaes", search_space=SPACE, seed=0, fallback=tpe)
    assert name == "cmaes" and isinstance(leader, CmaLeader)
    assert leader.independent_sampler is tpe
    with pytest.raises(ValueError, match="leader='nope' is unknown"):
        build_leader("nope", search_space=SPACE, seed=0, fallback=None)


# --------------------------------------------------------------------------- what the LLM sees


def test_describe_state_in_parameter_units() -> None:
    study = optuna.create_study()
    history(study, random_points(24, seed=6))
    leader = CmaLeader(search_space=SPACE, seed=0, population_size=6)
    snap = leader.snapshot(study, DISTS)
    text = describe_state(
        trials=study.trials, space=DISTS, directions=["minimize"], leader="cmaes", snapshot=snap
    )
    assert "CMA-ES: generation 4" in text
    assert "lr (log): mean" in text and "(log10 -" in text and "decades" in text
    assert "Main axes of the covariance" in text and "% of the variance" in text
    # the delegated categorical: what separates good trials from the rest
    assert "act: good" in text and "| rest" in text
    assert "Rough importance" in text
    best = min(study.trials, key=lambda t: t.value)
    assert f"#{best.number} value" in text
    tpe_text = describe_state(
        trials=study.trials, space=DISTS, directions=["minimize"], leader="tpe"
    )
    assert "leading this study is TPE" in tpe_text
    assert "lr: good" in tpe_text and "(median" in tpe_text


def test_importances_find_the_parameter_that_matters() -> None:
    study = optuna.create_study()
    rng = np.random.default_rng(0)
    for _ in range(40):
        p = {"a": float(rng.uniform(0, 1)), "b": float(rng.uniform(0, 1))}
        study.add_trial(optuna.create_trial(
            params=p, distributions={"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)},
            value=10 * p["a"] + 0.1 * p["b"],
        ))
    imp = importances(
        study.trials, {"a": FloatDistribution(0, 1), "b": FloatDistribution(0, 1)}, "minimize"
    )
    assert list(imp) == ["a", "b"] and imp["a"] > 0.8
    assert sum(imp.values()) == pytest.approx(1.0)
    assert importances(study.trials[:5], {"a": FloatDistribution(0, 1)}, "minimize") == {}


def test_hybrid_llm_prompt_carries_the_optimizer_state(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    chain = RecordingChain(make_chain())
    sampler = LLMSampler(
        chain=chain, search_space=SPACE, seed=0, mode="hybrid", llm_share=0.5,
        startup_trials=8, n_trials=30,
    )
    study = optuna.create_study(sampler=sampler, storage=f"sqlite:///{tmp_path / 'p.db'}")
    for _ in range(20):
        t = study.ask(fixed_distributions=DISTS)
        study.tell(t, loss(t.params))
    sources = [t.user_attrs["hpo:source"] for t in study.trials]
    assert sources[0] == "baseline" and set(sources[1:8]) == {"leader"}
    assert "llm" in sources[8:] and "leader" in sources[8:]
    assert study.user_attrs["hpo:leader"] == "cmaes"
    assert chain.views and len(llm_env.requests) == len(chain.views)
    view = chain.views[-1]
    assert view.optimizer_state and "CMA-ES: generation" in view.optimizer_state
    assert view.budget is not None and view.budget.n_trials == 30
    for t in study.trials[8:]:
        to = t.user_attrs["hpo:source_choice"]["to"]
        if sources[t.number] == "leader":
            assert to == "classical"
        elif sources[t.number] in ("llm", "repaired", "clamped"):
            assert to == "llm"


def test_rank_candidates_snaps_proposals_to_the_leaders_draws(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    chain = RecordingChain(make_chain())
    sampler = LLMSampler(
        chain=chain, search_space=SPACE, seed=0, mode="hybrid", llm_share=1.0,
        startup_trials=7, rank_candidates=4, adaptive_share=False,
    )
    study = optuna.create_study(sampler=sampler)
    for _ in range(10):
        t = study.ask(fixed_distributions=DISTS)
        study.tell(t, loss(t.params))
    llm = [t for t in study.trials if t.user_attrs["hpo:source"] == "llm"]
    assert len(llm) == 3 and len(chain.views) == 3
    for t, view in zip(llm, chain.views, strict=True):
        assert "Candidates drawn from CMA-ES" in view.optimizer_state
        k = t.user_attrs["hpo:candidate"]
        line = next(ln for ln in view.optimizer_state.splitlines() if ln.startswith(f"  {k}: "))
        # the random proposer wrote its own point: it was snapped onto candidate k
        assert f"lr={_fmt(t.params['lr'])}" in line and f"width={t.params['width']}" in line


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def test_hybrid_rejects_bad_combinations() -> None:
    with pytest.raises(ValueError, match="fallback_share"):
        LLMSampler(mode="hybrid", fallback_share=0.2)
    with pytest.raises(ValueError, match="rank_candidates"):
        LLMSampler(mode="propose", rank_candidates=3)
    cats = [ParamSpec(f"c{i}", CategoricalDistribution(["a", "b"])) for i in range(3)]
    with pytest.raises(ValueError, match="needs the CMA-ES leader"):
        LLMSampler(mode="hybrid", search_space=cats, rank_candidates=3)
    with pytest.raises(ValueError, match="mode='swarm' is unknown"):
        LLMSampler(mode="swarm")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- conformance


class TestCmaLeader(BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: CmaLeader(seed=0)


class TestHybridWithoutChain(BasicSamplerTestCase, RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: LLMSampler(seed=0, mode="hybrid", leader="cmaes", startup_trials=0)


class TestHybridWithChain(BasicSamplerTestCase, RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self, llm_env: FakeLLMServer) -> Callable[[], BaseSampler]:
        def factory() -> BaseSampler:
            return LLMSampler(
                chain=make_chain(), seed=0, mode="hybrid", leader="cmaes", llm_share=0.5,
                startup_trials=0,
            )

        return factory
