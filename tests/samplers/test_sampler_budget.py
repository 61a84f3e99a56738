"""The sampler's side of real LLM use: the trial budget and fidelity in the view, never more
proposals than trials left, prefetch before the trial exists, permanent errors, the honest
source accounting and the exact-request audit dump. The real OpenAI SDK client talks to the
fake LLM server; storage is SQLite.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
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
    RecordingChain,
    llm_env_fixture,
    make_chain,
    server_fixture,
)
from hpo.agents.chain import TrialBudget
from hpo.errors import ConfigError
from hpo.llm.base import LLMModelNotFound
from hpo.samplers import LLMSampler, llm_share_summary, sampler_from_agent_config
from hpo.samplers._audit import call_dump, write_call_dump
from hpo.space import ParamSpec
from hpo.testing import FakeLLMServer, FakeReply

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = [
    ParamSpec("lr", FloatDistribution(1e-4, 1e-1, log=True), default=1e-3),
    ParamSpec("layers", IntDistribution(1, 8), default=2),
    ParamSpec("act", CategoricalDistribution(["relu", "gelu", "tanh"]), default="relu"),
]
DISTS: dict[str, BaseDistribution] = {s.name: s.distribution for s in SPACE}






def new_study(sampler: LLMSampler, tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.create_study(
        sampler=sampler, storage=f"sqlite:///{tmp_path / 'hpo.db'}", study_name=name
    )


def run(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        t = study.ask(fixed_distributions=DISTS)
        study.tell(t, float(t.params["layers"]))


def n_proposals(req: Any) -> int:
    return int(req.last_user_text.split("<n_proposals>")[1].split("</n_proposals>")[0])


# --------------------------------------------------------------------------- budget


def test_never_more_proposals_than_trials_left(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    chain = RecordingChain(make_chain())
    sampler = LLMSampler(chain=chain, search_space=SPACE, seed=0, batch_size=4, n_trials=6)
    study = new_study(sampler, tmp_path)
    run(study, 6)
    asked = [n_proposals(r) for r in llm_env.requests]
    assert asked == [4, 1]  # trials 1-4 from one call; the last trial asks for one
    first, last = chain.views
    assert first.budget == TrialBudget(n_trials=6, finished=1, running=0, left=5)
    assert last.budget == TrialBudget(n_trials=6, finished=5, running=0, left=1)
    assert [t.user_attrs.get("hpo:batch") for t in study.trials] == [
        None, "1/4", "2/4", "3/4", "4/4", "1/1"
    ]


def test_running_and_rerun_trials_in_the_budget(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    chain = RecordingChain(make_chain())
    sampler = LLMSampler(chain=chain, search_space=SPACE, seed=0, n_trials=10)
    study = new_study(sampler, tmp_path)
    run(study, 2)
    failed = study.ask(fixed_distributions=DISTS)
    study._storage.set_trial_user_attr(failed._trial_id, "hpo:retried", True)
    study.tell(failed, state=TrialState.FAIL)  # re-run elsewhere: not in the budget
    study.ask(fixed_distributions=DISTS)  # stays RUNNING
    study.ask(fixed_distributions=DISTS)
    assert chain.views[-1].budget == TrialBudget(n_trials=10, finished=2, running=1, left=7)


def test_no_budget_means_none_in_the_view(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    chain = RecordingChain(make_chain())
    study = new_study(LLMSampler(chain=chain, search_space=SPACE, batch_size=3), tmp_path)
    run(study, 2)
    assert chain.views[0].budget is None and chain.views[0].n_proposals == 3


def test_fidelity_gets_the_median_duration(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    chain = RecordingChain(make_chain())
    sampler = LLMSampler(
        chain=chain, search_space=SPACE, baseline=False, fidelity="up to 20 epochs per trial",
        context={"task": "digits, a small MLP on one CPU"},
    )
    study = new_study(sampler, tmp_path)
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    for i, seconds in enumerate((10, 34, 50)):
        study.add_trial(optuna.trial.FrozenTrial(
            number=i, state=TrialState.COMPLETE, value=float(i), values=None,
            datetime_start=start, datetime_complete=start + datetime.timedelta(seconds=seconds),
            params={"lr": 1e-3 * (i + 1), "layers": i + 1, "act": "relu"}, distributions=DISTS,
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=i,
        ))
    run(study, 1)
    view = chain.views[0]
    assert view.fidelity == "up to 20 epochs per trial; median trial 34 s"
    assert view.context == {"task": "digits, a small MLP on one CPU"}
    assert "a small MLP on one CPU" in llm_env.requests[0].last_user_text


def test_the_factory_passes_budget_fidelity_context_and_mode(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    sampler = sampler_from_agent_config(
        {"provider": "openai", "chain": "single", "max_retries": 0, "context": "tabular task",
         "mode": "hybrid", "leader": "cmaes", "llm_share": 0.5, "startup_trials": 2},
        search_space=SPACE, fallback=optuna.samplers.TPESampler(seed=0), seed=0, batch_size=2,
        n_trials=12, dump_dir=tmp_path / "llm", fidelity="up to 3 epochs per trial",
    )
    assert isinstance(sampler, LLMSampler)
    assert sampler.mode == "hybrid" and sampler.leader == "cmaes"
    study = new_study(sampler, tmp_path)
    run(study, 6)
    req = llm_env.requests[0].last_user_text
    assert "tabular task" in req
    assert len(llm_env.requests) >= 1
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "llm").iterdir())]
    assert docs and all(d["study"] == "s" for d in docs)


@pytest.mark.parametrize(
    ("agent", "match"),
    [
        ({"mode": "swarm"}, "agent.mode='swarm' is unknown"),
        ({"leader": "bayes"}, "agent.leader='bayes' is unknown"),
        ({"llm_share": 1.5}, "agent.llm_share=1.5 is invalid"),
        ({"llm_floor": -0.1}, "agent.llm_floor=-0.1 is invalid"),
        ({"startup_trials": 2.5}, "agent.startup_trials=2.5 is invalid"),
        ({"stall_trials": -1}, "agent.stall_trials=-1 is invalid"),
        ({"adaptive_share": "yes"}, "agent.adaptive_share='yes' is invalid"),
        ({"mode": "hybrid", "fallback_share": 0.2}, "agent.llm_share"),
        ({"rank_candidates": 3}, "agent.rank_candidates=3 needs agent.mode=hybrid"),
        ({"mode": "hybrid", "leader": "tpe", "rank_candidates": 3}, "CMA-ES leader"),
    ],
)
def test_bad_sampler_keys_are_one_clear_line(agent: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sampler_from_agent_config(
            {"provider": "none", **agent}, search_space=SPACE,
            fallback=optuna.samplers.TPESampler(seed=0), seed=0, batch_size=1,
        )


# --------------------------------------------------------------------------- prefetch


def test_prefetch_calls_before_the_trial_exists(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    dump = tmp_path / "llm"
    sampler = LLMSampler(
        chain=make_chain(), search_space=SPACE, seed=0, batch_size=2, n_trials=8, dump_dir=dump
    )
    study = new_study(sampler, tmp_path)
    # trial 0 is the baseline: one call for the batch's LLM trials, 1 and 2
    assert sampler.prefetch(study, 2) == 2
    assert len(llm_env.requests) == 1 and n_proposals(llm_env.requests[0]) == 2
    assert study.trials == []
    run(study, 2)
    assert len(llm_env.requests) == 1  # the asks popped the prefetched proposal
    t1 = study.trials[1]
    assert t1.user_attrs["hpo:source"] == "llm" and t1.user_attrs["hpo:llm_call"] == "call-0001"
    assert t1.user_attrs["hpo:latency_s"] > 0
    # the wait happened before the trial started, so it is not in the trial's duration
    assert t1.datetime_start is not None
    assert llm_env.requests[0].received_at <= t1.datetime_start.timestamp()
    doc = json.loads((dump / "call-0001-proposer.json").read_text())
    assert doc["trial"] == "prefetched"
    # trial 2's proposal is still queued: one more call, for trial 3 alone
    assert sampler.prefetch(study, 2) == 2
    assert len(llm_env.requests) == 2 and n_proposals(llm_env.requests[1]) == 1
    run(study, 2)
    assert len(llm_env.requests) == 2
    assert [t.user_attrs["hpo:batch"] for t in study.trials[2:4]] == ["2/2", "1/1"]
    assert [t.user_attrs["hpo:llm_call"] for t in study.trials[2:4]] == ["call-0001",
                                                                         "call-0002"]
    assert sampler.prefetch(study, 0) == 0


def test_a_failed_prefetch_is_recorded_without_asking_again(
    llm_env: FakeLLMServer, tmp_path: Path
) -> None:
    llm_env.script([FakeReply.server_error(500)])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0, baseline=False)
    study = new_study(sampler, tmp_path)
    sampler.prefetch(study, 1)
    run(study, 1)
    assert len(llm_env.requests) == 1
    assert study.trials[0].user_attrs["hpo:fallback_reason"] == "llm_error:server_error"
    run(study, 1)  # the next trial asks again
    assert len(llm_env.requests) == 2 and study.trials[1].user_attrs["hpo:source"] == "llm"


def test_prefetch_and_asks_from_many_threads(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0, batch_size=3,
                         n_trials=24, adaptive_share=False)
    study = new_study(sampler, tmp_path)
    errors: list[BaseException] = []

    def slot() -> None:
        try:
            for _ in range(6):
                sampler.prefetch(study, 1)
                t = study.ask(fixed_distributions=DISTS)
                study.tell(t, float(t.params["layers"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=slot) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    trials = study.trials
    assert len(trials) == 24 and all(t.state == TrialState.COMPLETE for t in trials)
    keys = {tuple(sorted(t.params.items())) for t in trials}
    assert len(keys) == 24
    assert len(llm_env.requests) < 23  # batches were shared
    sources = [t.user_attrs["hpo:source"] for t in trials]
    assert sources.count("baseline") == 1 and sources.count("llm") >= 20


def test_prefetch_without_a_chain_does_nothing(tmp_path: Path) -> None:
    sampler = LLMSampler(search_space=SPACE, seed=0)
    study = new_study(sampler, tmp_path)
    assert sampler.prefetch(study, 4) == 0
    run(study, 2)
    assert [t.user_attrs["hpo:source"] for t in study.trials] == ["baseline", "fallback"]


# --------------------------------------------------------------------------- errors


class _ModelNotFoundChain:
    """The chain a client with an unknown model produces: the error carries the fix."""

    name = "unknown-model"

    def propose(self, view: Any) -> Any:
        exc = LLMModelNotFound("the server does not serve model 'gpt-9'")
        exc.fix = "set agent.model to one of: llama-3.1-8b"
        raise exc

    def repair(self, view: Any, previous: Any, errors: list[str]) -> Any:
        raise AssertionError("not reached")


def test_a_permanent_error_names_the_fix_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = LLMSampler(chain=_ModelNotFoundChain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    with caplog.at_level(logging.INFO, logger="hpo.samplers"):
        run(study, 3)
    reasons = [t.user_attrs["hpo:fallback_reason"] for t in study.trials]
    assert reasons == ["llm_error:model_not_found"] + ["llm_disabled:model_not_found"] * 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "Fix: set agent.model to one of: llama-3.1-8b" in lines[0]


def test_transient_errors_are_loud_once_per_kind(
    llm_env: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm_env.script([FakeReply.server_error(500), FakeReply.server_error(503)])
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False)
    study = new_study(sampler, tmp_path)
    with caplog.at_level(logging.INFO, logger="hpo.samplers"):
        run(study, 3)
    reasons = [t.user_attrs.get("hpo:fallback_reason") for t in study.trials]
    assert reasons == ["llm_error:server_error", "llm_error:server_error", None]
    said = [r for r in caplog.records if "server_error errors are logged" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.INFO]
    assert sampler.llm_disabled is None


# --------------------------------------------------------------------------- accounting


def _trial(value: float, **attrs: Any) -> optuna.trial.FrozenTrial:
    return optuna.create_trial(
        params={"layers": 2}, distributions={"layers": DISTS["layers"]}, value=value,
        user_attrs=attrs,
    )


def test_the_summary_counts_every_source() -> None:
    study = optuna.create_study()
    study.add_trial(_trial(1.0, **{"hpo:source": "baseline"}))
    study.add_trial(_trial(2.0, **{"hpo:source": "llm"}))
    study.add_trial(_trial(3.0, **{"hpo:source": "repaired"}))
    study.add_trial(_trial(4.0, **{"hpo:source": "clamped"}))
    for reason in ("llm_error:timeout", "bandit", "bandit"):
        study.add_trial(_trial(5.0, **{"hpo:source": "fallback", "hpo:fallback_reason": reason}))
    study.add_trial(_trial(6.0))
    study.set_user_attr("hpo:llm_calls_total", 4)
    assert llm_share_summary(study) == (
        "3 of 8 trials came from the LLM (1 repaired, 1 clamped), 3 from the fallback "
        "(bandit 2, llm_error:timeout 1), 1 baseline, 1 without a recorded source; "
        "4 LLM calls."
    )


def test_the_summary_of_a_sweep_without_an_llm_says_so() -> None:
    study = optuna.create_study()
    for value in (1.0, 2.0):
        study.add_trial(_trial(value))
    assert llm_share_summary(study) == (
        "0 of 2 trials came from the LLM: the sweep ran without one "
        "(a classical sampler chose all 2).")
    study.set_user_attr("hpo:llm_calls_total", 1)  # it was asked: the full accounting
    assert llm_share_summary(study).startswith("0 of 2 trials came from the LLM (0 repaired")


def test_the_summary_says_zero_and_names_the_leader(llm_env: FakeLLMServer,
                                                    tmp_path: Path) -> None:
    study = new_study(LLMSampler(search_space=SPACE, seed=0), tmp_path)
    run(study, 3)
    assert llm_share_summary(study).startswith(
        "0 of 3 trials came from the LLM (0 repaired, 0 clamped), 2 from the fallback "
        "(no_llm 2), 1 baseline; 0 LLM calls."
    )
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, seed=0, mode="hybrid",
                         startup_trials=3, llm_share=1.0, adaptive_share=False)
    study = new_study(sampler, tmp_path, "hybrid")
    run(study, 5)
    text = llm_share_summary(study)
    assert text.startswith("2 of 5 trials came from the LLM (0 repaired, 0 clamped), 2 from "
                           "the leader CMA-ES, 0 from the fallback, 1 baseline; 2 LLM calls.")
    assert "LLM share now 1.00" in text


def test_the_report_shows_the_summary(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    from hpo.report import build_report

    study = new_study(LLMSampler(chain=make_chain(), search_space=SPACE, seed=0), tmp_path)
    run(study, 3)
    report = build_report(study, tmp_path / "report")
    html = report.html.read_text()
    assert "2 of 3 trials came from the LLM" in html


# --------------------------------------------------------------------------- audit dump


def test_the_dump_is_the_exact_request_without_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"propose; key {CANARY}"}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    }
    record = SimpleNamespace(
        role="proposer", provider="openai", model="gpt-4o-mini-2024-07-18",
        requested_model="gpt-4o-mini", structured_output="json_schema", request=request,
        usage=SimpleNamespace(input_tokens=10, output_tokens=5, cost_usd=0.0), latency_s=0.2,
        cached=False, error=None, raw_text='{"proposals": []}', system="s", messages=[],
    )
    doc = call_dump(7, record, study="s", trial="prefetched")
    assert doc["request"] == request and "system" not in doc
    assert doc["requested_model"] == "gpt-4o-mini"
    assert doc["answered_model"] == "gpt-4o-mini-2024-07-18"
    assert doc["structured_output"] == "json_schema" and doc["trial"] == "prefetched"
    path = write_call_dump(tmp_path / "d", 7, record, study="s", trial=3)
    assert path.name == "call-0007-proposer.json"
    text = path.read_text()
    assert CANARY not in text and "propose; key ***" in text
    assert json.loads(text)["request"]["response_format"]["type"] == "json_schema"


def test_the_dump_file_redacts(llm_env: FakeLLMServer, tmp_path: Path) -> None:
    sampler = LLMSampler(chain=make_chain(), search_space=SPACE, baseline=False,
                         dump_dir=tmp_path / "d", context={"note": f"key {CANARY}"})
    study = new_study(sampler, tmp_path)
    run(study, 1)
    text = (tmp_path / "d" / "call-0001-proposer.json").read_text()
    assert CANARY not in text
    doc = json.loads(text)
    assert doc["trial"] == 0 and doc["role"] == "proposer" and doc["raw_text"]
    assert doc["usage"]["input_tokens"] > 0
    # clients that report the exact request body carry it; others the prompt they were given
    assert doc["request"] is not None or doc["messages"]
