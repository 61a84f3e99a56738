"""Damage control: the deterministic source choice and the bandit over the LLM and the
classical sampler, unit by unit and end to end with the real OpenAI SDK client against the
fake LLM server (an adversarial LLM, a good one, a rerun).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from _sampler_env import (  # noqa: F401 (the fixtures)
    llm_env_fixture,
    make_chain,
    server_fixture,
)
from hpo.samplers import LLMSampler, llm_share_summary, source_summary
from hpo.samplers._choice import Evidence, SharePolicy, SourceStats, draw, gather_evidence
from hpo.samplers._llm import source_kind
from hpo.space import ParamSpec
from hpo.testing import FakeLLMServer, RecordedRequest, random_proposer

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = [
    ParamSpec("x", FloatDistribution(-5, 5), default=0.0),
    ParamSpec("y", FloatDistribution(-5, 5), default=0.0),
    ParamSpec("c", CategoricalDistribution(["a", "b", "c"]), default="b"),
]
DISTS: dict[str, BaseDistribution] = {s.name: s.distribution for s in SPACE}
N_RE = re.compile(r"<n_proposals>\s*(\d+)")


def sphere(p: dict[str, Any]) -> float:
    return (p["x"] - 1.3) ** 2 + (p["y"] + 2.1) ** 2 + {"a": 0.0, "b": 0.5, "c": 1.0}[p["c"]]


def adversary() -> Callable[[RecordedRequest], dict[str, Any]]:
    """Always the worst corner; repeats it; off-space values (and the same in repairs)."""
    worst = {"x": -5.0, "y": 5.0, "c": "c"}
    off = {"x": 50.0, "y": 50.0, "c": "zzz"}
    count = [0]

    def respond(req: RecordedRequest) -> dict[str, Any]:
        m = N_RE.search(req.last_user_text)
        k = int(m.group(1)) if m else 1
        i = count[0]
        count[0] += 1
        p = off if "<errors>" in req.last_user_text else [worst, worst, off][i % 3]
        return {
            "proposals": [{"params": dict(p), "rationale": "trust me"} for _ in range(k)],
            "diagnosis": "adversary",
        }

    return respond


def oracle() -> Callable[[RecordedRequest], dict[str, Any]]:
    """A good LLM: distinct points close to the optimum."""
    count = [0]

    def respond(req: RecordedRequest) -> dict[str, Any]:
        m = N_RE.search(req.last_user_text)
        k = int(m.group(1)) if m else 1
        out = []
        for _ in range(k):
            count[0] += 1
            d = 0.002 * count[0] - 0.04
            out.append({"params": {"x": 1.3 + d, "y": -2.1 - d, "c": "a"}, "rationale": "near"})
        return {"proposals": out, "diagnosis": "converging"}

    return respond





def sweep(sampler: LLMSampler, n: int, storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, storage=storage)
    for _ in range(n):
        t = study.ask(fixed_distributions=DISTS)
        study.tell(t, sphere(t.params))
    return study


def llm_count(study: optuna.Study) -> int:
    return sum(t.user_attrs["hpo:source"] in ("llm", "repaired", "clamped") for t in study.trials)


# --------------------------------------------------------------------------- units


def test_draw_depends_only_on_salt_and_number() -> None:
    assert draw(7, 3) == draw(7, 3)
    assert draw(7, 3) != draw(8, 3)
    values = [draw(1, i) for i in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.03
    assert abs(sum(v < 0.25 for v in values) / len(values) - 0.25) < 0.03


def test_startup_trials_are_classical() -> None:
    policy = SharePolicy(base=1.0, startup_trials=3)
    choices = [policy.decide(i, Evidence()) for i in range(3)]
    assert {c.to for c in choices} == {"classical"} and {c.reason for c in choices} == {"startup"}
    assert policy.decide(3, Evidence()).p_llm == 1.0


def test_the_bandit_cuts_a_bad_source_to_the_floor_and_keeps_a_good_ones_share() -> None:
    bad = Evidence(llm=SourceStats(12, 0.3), classical=SourceStats(12, 8.0))
    good = Evidence(llm=SourceStats(12, 9.0), classical=SourceStats(12, 6.0))
    even = Evidence(llm=SourceStats(12, 6.0), classical=SourceStats(12, 6.2))
    for base in (1.0, 0.25):
        policy = SharePolicy(base=base, floor=0.05, salt=0)
        assert policy.decide(10, bad).p_llm == pytest.approx(0.05, abs=0.005)
        assert policy.decide(10, good).p_llm == pytest.approx(min(base, 0.95))
        assert policy.decide(10, even).p_llm == pytest.approx(min(base, 0.95))
    # too little evidence: the share is not touched yet
    early = Evidence(llm=SourceStats(2, 0.0), classical=SourceStats(1, 1.0))
    assert SharePolicy(base=1.0).decide(4, early).p_llm == 1.0
    # adaptive off: the share asked for, whatever the evidence
    assert SharePolicy(base=0.25, adaptive=False).decide(9, bad).p_llm == 0.25
    # a share asked for below the floor is never raised to it
    assert SharePolicy(base=0.0, floor=0.05).decide(9, good).p_llm == 0.0


def test_a_stall_hands_the_llm_turns_in_hybrid_mode() -> None:
    policy = SharePolicy(base=0.25, stall_trials=5, adaptive=False, salt=0)
    assert policy.decide(20, Evidence(since_improvement=4)).p_llm == 0.25
    burst = policy.decide(20, Evidence(since_improvement=5))
    assert burst.p_llm == 1.0 and burst.to == "llm" and burst.reason == "stall"
    assert policy.decide(20, Evidence(since_improvement=10)).p_llm == 0.25  # leader's turn
    assert policy.decide(20, Evidence(since_improvement=16)).p_llm == 1.0


def test_evidence_is_read_from_the_trials() -> None:
    study = optuna.create_study()

    def add(value: float, **attrs: Any) -> None:
        study.add_trial(optuna.create_trial(
            params={"x": 0.0}, distributions={"x": DISTS["x"]}, value=value, user_attrs=attrs
        ))

    add(5.0, **{"hpo:source": "baseline"})
    for v in (1.0, 2.0, 3.0):
        add(v, **{"hpo:source": "fallback", "hpo:fallback_reason": "bandit"})
    for v in (9.0, 8.0):
        add(v, **{"hpo:source": "llm"})
    add(7.0, **{"hpo:source": "clamped"})
    add(0.5, **{"hpo:source": "fallback", "hpo:fallback_reason": "no_proposal"})  # a miss
    add(0.1, **{"hpo:source": "llm", "hpo:retried": True})  # re-run: left out
    add(0.2)  # no source: another sampler's
    study.add_trial(optuna.create_trial(
        params={"x": 0.0}, distributions={"x": DISTS["x"]}, state=TrialState.FAIL,
        user_attrs={"hpo:source": "repaired"},
    ))
    ev = gather_evidence(study.trials, ["minimize"], source_kind)
    assert ev.llm.n == 5 and ev.classical.n == 4
    # ranks among the complete trials: the LLM's 9, 8, 7 beat 0, 1, 2 others of 10; the miss
    # and the failed trial earn 0
    assert ev.llm.total == pytest.approx((0 + 1 + 2) / 9)
    assert ev.since_improvement == 2  # after the 0.1 of trial 8: two finished trials


# --------------------------------------------------------------------------- end to end


def test_an_adversarial_llm_falls_to_the_floor(llm_env: FakeLLMServer) -> None:
    llm_env.responder = adversary()
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0, n_trials=40)
    study = sweep(sampler, 40)
    assert llm_count(study) <= 8
    last = study.trials[-1].user_attrs["hpo:source_choice"]
    assert last["p_llm"] <= 0.1 and "bandit" in last["why"]
    reasons = {t.user_attrs.get("hpo:fallback_reason") for t in study.trials}
    assert "bandit" in reasons
    summary = source_summary(study)
    assert summary.p_llm is not None and summary.p_llm <= 0.1
    assert summary.llm_rank is not None and summary.classical_rank is not None
    assert summary.llm_rank < summary.classical_rank
    assert "LLM share now" in llm_share_summary(study)


def test_a_good_llm_keeps_its_share(llm_env: FakeLLMServer) -> None:
    llm_env.responder = oracle()
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0, n_trials=30)
    study = sweep(sampler, 30)
    assert llm_count(study) >= 24
    # its whole share, less what the classical sampler keeps to compare with
    shares = [t.user_attrs["hpo:source_choice"]["p_llm"] for t in study.trials[1:]]
    assert min(shares) >= 0.8 and shares[-1] >= 0.8


def test_hybrid_with_an_adversarial_llm_gives_it_the_floor(llm_env: FakeLLMServer) -> None:
    llm_env.responder = adversary()
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, seed=1, n_trials=40, mode="hybrid"
    )
    study = sweep(sampler, 40)
    assert llm_count(study) <= 6
    assert sum(t.user_attrs["hpo:source"] == "leader" for t in study.trials) >= 28
    assert study.trials[-1].user_attrs["hpo:source_choice"]["p_llm"] <= 0.1


def test_a_rerun_replays_the_same_choices(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    def run(name: str) -> list[tuple[str, dict[str, Any]]]:
        llm_env.responder = random_proposer(5)
        sampler = LLMSampler(
            chain=make_chain(), search_space=SPACE, seed=3, n_trials=25, mode="hybrid",
            llm_share=0.4, startup_trials=4,
        )
        study = sweep(sampler, 25, storage=f"sqlite:///{tmp_path / (name + '.db')}")
        return [(t.user_attrs["hpo:source"], t.params) for t in study.trials]

    first = run("a")
    assert first == run("b")
    assert {"llm", "leader", "baseline"} <= {s for s, _ in first}


def test_a_restarted_driver_decides_the_same(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    """The choice for a trial depends on storage, not on the sampler object's history: the
    sweep continued by its own sampler and the same storage resumed by a new one agree."""
    db = tmp_path / "r.db"
    llm_env.responder = adversary()
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=2, n_trials=30)
    study = sweep(sampler, 12, storage=f"sqlite:///{db}")
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    study.ask(fixed_distributions=DISTS)  # trial 12, by the sampler that ran trials 0-11
    resumed = optuna.load_study(
        study_name=study.study_name, storage=f"sqlite:///{copy}",
        sampler=LLMSampler(chain=make_chain(), search_space=SPACE, seed=2, n_trials=30),
    )
    resumed.ask(fixed_distributions=DISTS)  # trial 12, by a restarted driver
    a = study.trials[12].user_attrs["hpo:source_choice"]
    b = resumed.trials[12].user_attrs["hpo:source_choice"]
    assert a == b and "bandit" in a["why"]
