"""Behaviour of hpo.samplers.LLMSampler with the real agent chain against the fake LLM server.

The chain is built by ``hpo.agents.build_chain`` with the OpenAI-compatible client, pointed at a
module-scoped :class:`~hpo.testing.FakeLLMServer` through ``OPENAI_BASE_URL``; replies are
scripted per test. Storage is a real SQLite file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from _sampler_env import (  # noqa: F401 (the fixtures)
    CANARY,
    llm_env_fixture,
    make_chain,
    server_fixture,
)
from hpo.samplers import LLMSampler, redact, redact_obj, sampler_from_agent_config
from hpo.samplers._choice import draw
from hpo.space import ParamSpec, check_value
from hpo.testing import FakeLLMServer, FakeReply, random_proposer

REPO = Path(__file__).resolve().parents[2]

SPACE = [
    ParamSpec("lr", FloatDistribution(1e-4, 1e-1, log=True), default=1e-3, description="step"),
    ParamSpec("layers", IntDistribution(1, 8), default=2),
    ParamSpec("act", CategoricalDistribution(["relu", "gelu", "tanh"]), default="relu"),
]
DISTS: dict[str, BaseDistribution] = {s.name: s.distribution for s in SPACE}
GOOD = {"lr": 0.01, "layers": 4, "act": "gelu"}





def new_study(sampler: LLMSampler, tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        sampler=sampler, storage=f"sqlite:///{tmp_path / 'hpo.db'}", study_name=name
    )


def run(
    study: optuna.Study, n: int, value: Callable[[dict[str, Any]], float] | None = None
) -> None:
    """Ask and tell ``n`` trials in sequence, the way the sweeper does."""
    for _ in range(n):
        trial = study.ask(fixed_distributions=DISTS)
        study.tell(trial, value(trial.params) if value else float(trial.number))


def reply(*params: dict[str, Any], diagnosis: str = "fake diagnosis") -> dict[str, Any]:
    return {
        "proposals": [{"params": p, "rationale": f"because {i}"} for i, p in enumerate(params)],
        "diagnosis": diagnosis,
    }


def attrs(study: optuna.Study, number: int) -> dict[str, Any]:
    return study.trials[number].user_attrs


def assert_valid(params: dict[str, Any]) -> None:
    for name, dist in DISTS.items():
        assert check_value(dist, params[name]) is None, (name, params[name])


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fallback_share": 1.5}, "fallback_share"),
        ({"fallback_share": -0.1}, "fallback_share"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_usd": -1.0}, "max_usd"),
        ({"fallback": "tpe"}, "fallback"),
        ({"search_space": [SPACE[0], SPACE[0]]}, "twice"),
        ({"search_space": [("lr", 1)]}, "ParamSpec"),
        ({"objective_names": "acc"}, "objective_names"),
        ({"context": {"a": 1}}, "context"),
    ],
)
def test_invalid_arguments_raise_with_a_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LLMSampler(**kwargs)


def test_setters_validate_and_apply() -> None:
    sampler = LLMSampler(search_space=SPACE)
    sampler.set_batch_size(3)
    assert sampler.batch_size == 3
    with pytest.raises(ValueError, match="batch_size"):
        sampler.set_batch_size(0)
    sampler.set_search_space(SPACE[:1])
    assert [s.name for s in sampler.search_space or []] == ["lr"]
    study = optuna.create_study(sampler=sampler)
    assert sampler.infer_relative_search_space(study, study.ask()._cached_frozen_trial) == {
        "lr": DISTS["lr"]
    }


def test_reseed_rng_reseeds_the_fallback() -> None:
    class Fallback(optuna.samplers.RandomSampler):
        reseeded = 0

        def reseed_rng(self) -> None:
            Fallback.reseeded += 1
            super().reseed_rng()

    sampler = LLMSampler(fallback=Fallback(seed=1))
    sampler.reseed_rng()
    assert Fallback.reseeded == 1


# --------------------------------------------------------------------------- paths


def test_baseline_first_then_llm(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    assert study.trials[0].params == {"lr": 1e-3, "layers": 2, "act": "relu"}
    assert attrs(study, 0)["hpo:source"] == "baseline"
    assert llm_env.requests == []
    run(study, 1)
    assert attrs(study, 1)["hpo:source"] == "llm"
    assert len(llm_env.requests) == 1
    assert_valid(study.trials[1].params)


def test_baseline_clamps_defaults_and_samples_missing_ones(tmp_path: Path) -> None:
    space = [
        ParamSpec("lr", DISTS["lr"], default=5.0),
        ParamSpec("layers", DISTS["layers"]),
        ParamSpec("act", DISTS["act"], default="relu"),
    ]
    sampler = LLMSampler(search_space=space, seed=0)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    t = study.trials[0]
    assert t.params["lr"] == pytest.approx(0.1) and t.params["act"] == "relu"
    assert_valid(t.params)
    assert t.user_attrs["hpo:source"] == "baseline"
    assert t.user_attrs["hpo:param_sources"] == {
        "lr": "clamped",
        "layers": "fallback",
        "act": "baseline",
    }


def test_baseline_says_when_the_sweep_clamped_a_default(tmp_path: Path) -> None:
    # the sweep's plan clamps a default outside its range and keeps the config's value
    space = [ParamSpec("lr", DISTS["lr"], default=0.1, configured_default=5.0),
             ParamSpec("layers", DISTS["layers"], default=2),
             ParamSpec("act", DISTS["act"], default="relu")]
    study = new_study(LLMSampler(search_space=space, seed=0), tmp_path)
    run(study, 1)
    t = study.trials[0]
    assert t.params["lr"] == pytest.approx(0.1)
    assert t.user_attrs["hpo:param_sources"] == {
        "lr": "clamped", "layers": "baseline", "act": "baseline"}
    assert "clamped into its range for lr" in t.user_attrs["hpo:rationale"]


def test_batch_of_four_asks_costs_one_request(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, baseline=False, batch_size=4,
        adaptive_share=False,  # batching only: every trial is the LLM's
    )
    study = new_study(sampler, tmp_path)
    trials = [study.ask(fixed_distributions=DISTS) for _ in range(4)]  # 4 parallel slots
    assert len(llm_env.requests) == 1
    assert "<n_proposals>4</n_proposals>" in llm_env.requests[0].last_user_text
    for t in trials:
        study.tell(t, 1.0)
    ua = [attrs(study, i) for i in range(4)]
    assert {a["hpo:llm_call"] for a in ua} == {"call-0001"}
    assert [a["hpo:batch"] for a in ua] == ["1/4", "2/4", "3/4", "4/4"]
    assert ua[0]["hpo:tokens_in"] > 0 and all(a["hpo:tokens_in"] == 0 for a in ua[1:])
    assert [t.user_attrs["hpo:batch"] for t in trials] == ["1/4", "2/4", "3/4", "4/4"]  # live
    totals = study.user_attrs
    assert totals["hpo:tokens_in_total"] == sum(a["hpo:tokens_in"] for a in ua)
    assert totals["hpo:llm_calls_total"] == 1
    run(study, 1)  # the queue is empty again: one more request
    assert len(llm_env.requests) == 2


def test_parallel_optimize_shares_batches(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, baseline=False, batch_size=4,
        adaptive_share=False,  # batching only: every trial is the LLM's
    )
    study = new_study(sampler, tmp_path)
    seen_threads: set[int] = set()

    def objective(trial: optuna.Trial) -> float:
        seen_threads.add(threading.get_ident())
        return trial.suggest_float("lr", 1e-4, 1e-1, log=True) * trial.suggest_int(
            "layers", 1, 8
        ) + len(trial.suggest_categorical("act", ["relu", "gelu", "tanh"]))

    study.optimize(objective, n_trials=8, n_jobs=4)
    assert len(study.trials) == 8
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(llm_env.requests) == 2
    assert {t.user_attrs["hpo:source"] for t in study.trials} == {"llm"}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 8


def test_repair_fixes_an_out_of_range_value(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script(
        [reply({**GOOD, "lr": 5.0}), reply({**GOOD, "lr": 0.02}, diagnosis="lr was too high")]
    )
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    reqs = llm_env.requests
    assert len(reqs) == 2
    errors = reqs[1].last_user_text.split("<errors>", 1)[1].split("</errors>", 1)[0]
    assert "lr" in errors and "outside" in errors
    t = study.trials[0]
    assert t.params == {**GOOD, "lr": 0.02}
    assert t.user_attrs["hpo:source"] == "repaired"
    assert t.user_attrs["hpo:param_sources"] == {"lr": "repaired", "layers": "llm", "act": "llm"}
    assert study.user_attrs["hpo:llm_calls_total"] == 2
    assert t.user_attrs["hpo:llm_call"] == "call-0002"


def test_still_invalid_after_repair_is_clamped_or_sampled(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    bad = {"lr": 5.0, "layers": 4, "act": "sigmoid"}
    llm_env.script([reply(bad), reply(bad)])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    t = study.trials[0]
    assert len(llm_env.requests) == 2
    assert t.params["lr"] == pytest.approx(0.1) and t.params["layers"] == 4
    assert t.params["act"] in ("relu", "gelu", "tanh")
    assert t.user_attrs["hpo:source"] == "clamped"
    assert t.user_attrs["hpo:param_sources"] == {
        "lr": "clamped",
        "layers": "llm",
        "act": "fallback",
    }


def test_unknown_params_are_dropped_without_repair(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script([reply({**GOOD, "momentum": 0.9})])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    assert len(llm_env.requests) == 1
    t = study.trials[0]
    assert t.params == GOOD
    assert t.user_attrs["hpo:source"] == "llm"
    assert t.user_attrs["hpo:dropped_params"] == ["momentum"]


def test_missing_params_come_from_the_fallback(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    partial = {"lr": 0.01, "act": "tanh"}
    llm_env.script([reply(partial), reply(partial)])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    reqs = llm_env.requests
    assert len(reqs) == 2 and "'layers' is missing" in reqs[1].last_user_text
    t = study.trials[0]
    assert_valid(t.params)
    assert t.params["lr"] == 0.01 and t.params["act"] == "tanh"
    assert t.user_attrs["hpo:source"] == "llm"
    assert t.user_attrs["hpo:param_sources"] == {"lr": "llm", "layers": "fallback", "act": "llm"}


def test_duplicates_of_trials_and_of_each_other_are_dropped(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False, batch_size=3)
    study = new_study(sampler, tmp_path)
    study.add_trial(optuna.create_trial(params=GOOD, distributions=DISTS, value=1.0))
    fresh = {"lr": 0.003, "layers": 6, "act": "tanh"}
    llm_env.script([reply(GOOD, fresh, fresh)])
    run(study, 1)
    t = study.trials[-1]
    assert t.params == fresh
    assert t.user_attrs["hpo:dropped_proposals"] == [
        "proposal 1: duplicates trial 0",
        "proposal 3: duplicates proposal 2",
    ]
    assert len(llm_env.requests) == 1


def test_duplicate_of_a_running_trial_is_dropped(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    study.enqueue_trial(GOOD)
    running = study.ask(fixed_distributions=DISTS)  # takes the enqueued params, stays RUNNING
    assert running.params == GOOD
    assert llm_env.requests == []
    fresh = {"lr": 0.003, "layers": 6, "act": "tanh"}
    llm_env.script([reply(GOOD, fresh)])
    run(study, 1)
    t = study.trials[-1]
    assert t.params == fresh
    assert t.user_attrs["hpo:dropped_proposals"] == ["proposal 1: duplicates trial 0"]


def test_server_error_falls_back_with_reason(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script([FakeReply.server_error(500)])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False, seed=0)
    study = new_study(sampler, tmp_path)
    run(study, 2)
    first, second = study.trials
    assert first.user_attrs["hpo:source"] == "fallback"
    assert first.user_attrs["hpo:fallback_reason"] == "llm_error:server_error"
    assert_valid(first.params)
    assert second.user_attrs["hpo:source"] == "llm"  # the next trial asks again
    assert study.user_attrs["hpo:fallback_total"] == 1


def test_auth_error_disables_the_llm_with_one_line_naming_the_fix(
    llm_env: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm_env.script([FakeReply(status=401, error_message="bad key")])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    with caplog.at_level(logging.INFO, logger="hpo.samplers"):
        run(study, 4)
    assert len(llm_env.requests) == 1  # never asked again
    reasons = [t.user_attrs["hpo:fallback_reason"] for t in study.trials]
    assert reasons == ["llm_error:auth"] + ["llm_disabled:auth"] * 3
    assert sampler.llm_disabled == "llm_disabled:auth"
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1
    assert "disabled for this sweep" in said[0].getMessage()
    assert "Fix: " in said[0].getMessage() and "OPENAI_API_KEY" in said[0].getMessage()


def test_budget_spent_falls_back_with_one_warning(
    llm_env: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False, max_tokens=10)
    study = new_study(sampler, tmp_path)
    with caplog.at_level(logging.WARNING, logger="hpo.samplers"):
        run(study, 4)
    assert len(llm_env.requests) == 1
    reasons = [t.user_attrs.get("hpo:fallback_reason") for t in study.trials]
    assert reasons == [None, "budget", "budget", "budget"]
    warnings = [r for r in caplog.records if "budget" in r.getMessage()]
    assert len(warnings) == 1
    # A resumed study keeps counting: a new sampler on the same storage falls back at once.
    again = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False, max_tokens=10)
    resumed = optuna.load_study(study_name="s", storage=study._storage, sampler=again)
    run(resumed, 1)
    assert len(llm_env.requests) == 1
    assert resumed.trials[-1].user_attrs["hpo:fallback_reason"] == "budget"


def test_planner_stop_is_exposed(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script([{"step": "stop", "rationale": "converged: no gain in 10 trials"}])
    sampler = LLMSampler(chain=make_chain(chain="planner"), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    assert not sampler.stop_requested
    run(study, 2)
    assert sampler.stop_requested
    assert sampler.stop_reason == "converged: no gain in 10 trials"
    assert study.user_attrs["hpo:stop"] == "converged: no gain in 10 trials"
    assert [t.user_attrs["hpo:fallback_reason"] for t in study.trials] == ["stop", "stop"]
    assert len(llm_env.requests) == 1


def test_planner_step_is_recorded(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script(
        [{"step": "radical", "rationale": "jump", "proposals": [reply(GOOD)["proposals"][0]]}]
    )
    sampler = LLMSampler(chain=make_chain(chain="planner"), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 1)
    assert study.trials[0].user_attrs["hpo:step"] == "radical"
    assert not sampler.stop_requested


def test_no_chain_and_share_use_the_fallback(
    llm_env: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="hpo.samplers"):
        study = new_study(LLMSampler(search_space=SPACE, baseline=False), tmp_path, "none")
        run(study, 3)
    assert {t.user_attrs["hpo:fallback_reason"] for t in study.trials} == {"no_llm"}
    # said once, at INFO: the loud warning is build_chain's (once per process), and
    # agent=none is the user's own choice
    said = [r for r in caplog.records if "no agent chain" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    share = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False, fallback_share=1.0)
    study = new_study(share, tmp_path, "share")
    run(study, 3)
    assert {t.user_attrs["hpo:fallback_reason"] for t in study.trials} == {"share"}
    assert llm_env.requests == []
    assert study.user_attrs["hpo:fallback_total"] == 3


def test_fallback_share_draw_is_seeded(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    """The share is drawn from the seed and the trial number only: reruns choose the same."""

    def sources(name: str, adaptive: bool) -> list[str]:
        llm_env.responder = random_proposer(1)
        s = LLMSampler(
            chain=make_chain(), search_space=SPACE, baseline=False, fallback_share=0.5, seed=7,
            adaptive_share=adaptive,
        )
        study = new_study(s, tmp_path, name)
        run(study, 8)
        return [t.user_attrs["hpo:source"] for t in study.trials]

    first = sources("a", adaptive=False)
    assert first == ["fallback" if draw(7, i) >= 0.5 else "llm" for i in range(8)]
    assert {"fallback", "llm"} <= set(first)
    assert sources("b", adaptive=True) == sources("c", adaptive=True)


def test_define_by_run_learns_the_space(llm_env: FakeLLMServer) -> None:
    sampler = LLMSampler(chain=make_chain(), seed=0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        n = trial.suggest_int("n", 1, 4)
        return (x - 1) ** 2 + n

    study.optimize(objective, n_trials=4)
    sources = [t.user_attrs["hpo:source"] for t in study.trials]
    assert sources[0] == "fallback"
    assert study.trials[0].user_attrs["hpo:fallback_reason"] == "startup"
    assert sources[1:] == ["llm", "llm", "llm"]
    space = json.loads(
        llm_env.requests[0].last_user_text.split("<search_space>")[1].split("</search_space>")[0]
    )
    assert set(space) == {"x", "n"}


def test_provenance_and_totals_in_sqlite(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    llm_env.script([reply(GOOD, {"lr": 0.002, "layers": 3, "act": "tanh"}, diagnosis="diag one")])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, batch_size=2)
    study = new_study(sampler, tmp_path, "prov")
    run(study, 4)
    loaded = optuna.load_study(
        study_name="prov",
        storage=f"sqlite:///{tmp_path / 'hpo.db'}",
        sampler=optuna.samplers.RandomSampler(),
    )
    t = loaded.trials
    assert [x.user_attrs["hpo:source"] for x in t] == ["baseline", "llm", "llm", "llm"]
    assert t[1].user_attrs["hpo:rationale"] == "because 0"
    for x in t[1:]:
        for key in ("hpo:tokens_in", "hpo:tokens_out", "hpo:cost_usd", "hpo:latency_s"):
            assert key in x.user_attrs
    totals = loaded.user_attrs
    assert totals["hpo:tokens_in_total"] == sum(x.user_attrs.get("hpo:tokens_in", 0) for x in t)
    assert totals["hpo:tokens_out_total"] == sum(x.user_attrs.get("hpo:tokens_out", 0) for x in t)
    assert math.isclose(
        totals["hpo:cost_usd_total"], sum(x.user_attrs.get("hpo:cost_usd", 0.0) for x in t)
    )
    assert totals["hpo:llm_calls_total"] == len(llm_env.requests) == 2
    assert totals["hpo:tokens_in_total"] > 0 and totals["hpo:cost_usd_total"] > 0

    from optuna_dashboard import get_note

    assert "diag" in get_note(loaded)
    handle = optuna.trial.Trial(loaded, t[1]._trial_id)
    assert "because 0" in get_note(handle)


def test_dumps_are_written_without_secrets(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    dump = tmp_path / "dumps"
    sampler = LLMSampler(
        chain=make_chain(),
        search_space=SPACE,
        baseline=False,
        dump_dir=dump,
        context={"note": f"the key is {CANARY}"},
    )
    study = new_study(sampler, tmp_path)
    llm_env.script([reply({**GOOD, "lr": 9.0}, diagnosis=f"echo {CANARY}")])
    run(study, 2)
    files = sorted(p.name for p in dump.iterdir())
    assert files == ["call-0001-proposer.json", "call-0002-repair.json", "call-0003-proposer.json"]
    assert any(CANARY in r.last_user_text for r in llm_env.requests)  # it did reach the prompt
    for path in dump.iterdir():
        text = path.read_text()
        assert CANARY not in text
        doc = json.loads(text)
        assert {"request", "raw_text", "usage", "structured_output"} <= set(doc)
        assert doc["request"]["messages"]  # the exact body the server received
    assert "***" in (dump / "call-0001-proposer.json").read_text()
    from optuna_dashboard import get_note

    assert CANARY not in get_note(study)
    for t in study.trials:
        assert CANARY not in json.dumps(t.user_attrs)


def test_redact_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456")
    monkeypatch.setenv("SOME_SECRET", "s3cr3t-value")
    monkeypatch.setenv("SHORT_API_KEY", "1")
    text = "a tok-123456 b s3cr3t-value c 1"
    assert redact(text) == "a *** b *** c 1"
    assert redact_obj({"k": ["tok-123456", 3, ("s3cr3t-value",)]}) == {"k": ["***", 3, ["***"]]}
    assert redact("abc", extra=["abcdef"]) == "abc"
    assert redact("x abcdef y", extra=["abcdef"]) == "x *** y"


# --------------------------------------------------------------------------- the example


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "python_api", REPO / "examples" / "python_api.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_with_the_fake_server(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    example = _load_example()
    study = example.main(n_trials=6, storage=f"sqlite:///{tmp_path / 'ex.db'}")
    assert len(study.trials) == 6
    sources = [t.user_attrs["hpo:source"] for t in study.trials]
    assert sources[0] == "fallback" and "llm" in sources
    assert llm_env.requests


def test_example_runs_without_a_key(
    llm_env: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    example = _load_example()
    with caplog.at_level(logging.INFO):  # the loud warning is build_chain's, once per process
        study = example.main(n_trials=3)
    assert {t.user_attrs["hpo:fallback_reason"] for t in study.trials} <= {"startup", "no_llm"}
    assert any("no agent chain" in r.getMessage() for r in caplog.records)
    assert llm_env.requests == []


# --------------------------------------------------------------------------- edge cases


def test_values_are_normalized_onto_optunas_types_and_grid(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    grid = FloatDistribution(0.0, 1.0, step=0.1)
    space = [ParamSpec("p", grid), ParamSpec("n", IntDistribution(1, 8))]
    llm_env.script([reply({"p": 0.30000001, "n": 3.0})])
    sampler = LLMSampler(chain=make_chain(), search_space=space, baseline=False)
    study = new_study(sampler, tmp_path)
    trial = study.ask(fixed_distributions={"p": grid, "n": IntDistribution(1, 8)})
    assert trial.params["p"] == pytest.approx(0.3, abs=1e-12)
    assert isinstance(trial.params["n"], int) and trial.params["n"] == 3
    assert study.trials[0].user_attrs["hpo:source"] == "llm"
    assert len(llm_env.requests) == 1


def test_malformed_reply_falls_back_and_is_accounted(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    llm_env.script(["this is not JSON at all"])
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, baseline=False, dump_dir=tmp_path / "d"
    )
    study = new_study(sampler, tmp_path)
    run(study, 1)
    t = study.trials[0]
    assert t.user_attrs["hpo:fallback_reason"] == "llm_error:malformed"
    assert study.user_attrs["hpo:llm_calls_total"] == 1
    doc = json.loads((tmp_path / "d" / "call-0001-proposer.json").read_text())
    assert doc["error"] and doc["raw_text"] == "this is not JSON at all"


def test_the_agent_budget_is_the_samplers(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    # agent.budget reaches the one enforcer, the sampler (from storage), not the chain
    sampler = sampler_from_agent_config(
        {"provider": "openai", "chain": "single", "max_retries": 0, "dump_prompts": False,
         "budget": {"max_tokens": 1}},
        search_space=SPACE, fallback=optuna.samplers.RandomSampler(seed=0), seed=0,
        batch_size=1,
    )
    study = new_study(sampler, tmp_path)
    run(study, 4)  # the baseline, one LLM trial, then the budget is spent
    sources = [t.user_attrs.get("hpo:source") for t in study.trials]
    reasons = [t.user_attrs.get("hpo:fallback_reason") for t in study.trials]
    assert sources[:2] == ["baseline", "llm"] and reasons[2:] == ["budget", "budget"]
    assert len(llm_env.requests) == 1


class _BrokenChain:
    """A chain with a bug (not an LLM failure): the sampler must still not raise."""

    name = "broken"

    def propose(self, view: Any) -> Any:
        raise RuntimeError("bug in a chain")

    def repair(self, view: Any, previous: Any, errors: list[str]) -> Any:
        raise RuntimeError("bug in a chain")


def test_a_chain_bug_falls_back_without_raising(tmp_path: Path) -> None:
    sampler = LLMSampler(chain=_BrokenChain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    run(study, 2)
    assert {t.user_attrs["hpo:fallback_reason"] for t in study.trials} == {"llm_error:internal"}
    assert "hpo:llm_calls_total" not in study.user_attrs


def test_mismatched_objective_names_warn_and_still_work(
    llm_env: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, baseline=False, objective_names=["a", "b"]
    )
    study = new_study(sampler, tmp_path)
    with caplog.at_level(logging.WARNING, logger="hpo.samplers"):
        run(study, 1)
    assert study.trials[0].user_attrs["hpo:source"] == "llm"
    assert any("objective_names" in r.getMessage() for r in caplog.records)


def test_multi_objective_study(llm_env: FakeLLMServer) -> None:
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, objective_names=["acc", "latency"]
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(3):
        t = study.ask(fixed_distributions=DISTS)
        study.tell(t, [t.params["lr"], t.params["layers"]])
    assert [t.user_attrs["hpo:source"] for t in study.trials] == ["baseline", "llm", "llm"]
    assert "maximize" in llm_env.requests[0].last_user_text
