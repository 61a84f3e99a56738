"""End-to-end LLM sweeps (issue 3 item 7): ``python -m hpo.train -m agent=openai|claude|auto``.

The fake LLM server runs in this process; the CLI runs as a subprocess whose provider points at
it through ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``. The proposer's replies are scripted so
that every trial's parameters are known in advance; the analyst (agent.chain=diagnose, the
default) gets a fixed reply. Trainings are tiny (``trainer=debug``). One sweep per provider,
shared by the tests that read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import clean_env, run_cli
from hpo.attrs import trial_output_dir
from hpo.testing import FakeLLMServer, FakeReply, RecordedRequest

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPENAI_KEY = "sk-test-e2e-openai-5f1d2c3b4a"
ANTHROPIC_KEY = "sk-ant-test-e2e-9a8b7c6d5e"
P1 = {"optimizer.lr": 0.003, "optimizer.weight_decay": 0.0002, "data.batch_size": 32,
      "model.label_smoothing": 0.05, "optimizer": "adam"}
P2 = {"optimizer.lr": 0.02, "optimizer.weight_decay": 1e-05, "data.batch_size": 128,
      "model.label_smoothing": 0.1, "optimizer": "sgd"}
P3 = {"optimizer.lr": 0.0007, "optimizer.weight_decay": 0.001, "data.batch_size": 64,
      "model.label_smoothing": 0.0, "optimizer": "adamw"}
P4 = {"optimizer.lr": 0.005, "optimizer.weight_decay": 0.05, "data.batch_size": 32,
      "model.label_smoothing": 0.15, "optimizer": "adam"}
PROPOSER_USAGE = (1000, 100)
ANALYST_USAGE = (500, 50)


def rationale(params: dict[str, Any]) -> str:
    return f"try lr={params['optimizer.lr']} with {params['optimizer']}"


def is_proposer(req: RecordedRequest) -> bool:
    return req.system.startswith("You are the proposer") and "repair" not in req.system[:120]


def is_analyst(req: RecordedRequest) -> bool:
    return req.system.startswith("You are the analyst")


class ByRole:
    """Responder: the proposer gets the next scripted batch, the analyst a fixed reading."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = list(batches)

    def __call__(self, req: RecordedRequest) -> Any:
        if is_proposer(req):
            batch = self.batches.pop(0)
            body = {"proposals": [{"params": p, "rationale": rationale(p)} for p in batch],
                    "diagnosis": "the proposer's reading"}
            return FakeReply(json_obj=body, usage=PROPOSER_USAGE)
        if is_analyst(req):
            body = {"diagnosis": "the learning rate matters most", "findings": ["lr"],
                    "recommendations": ["vary lr"]}
            return FakeReply(json_obj=body, usage=ANALYST_USAGE)
        return None  # any other role: the fake's random proposer


@dataclass
class Sweep:
    proc: Any
    study: optuna.Study
    requests: list[RecordedRequest]
    root: Path

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.trials

    def proposer(self) -> list[RecordedRequest]:
        return [r for r in self.requests if is_proposer(r)]


def run_sweep(server: FakeLLMServer, root: Path, env: dict[str, str], *args: str) -> Sweep:
    root.mkdir(parents=True, exist_ok=True)
    db = root / "s.db"
    proc = run_cli(
        ["-m", "hpo.train", "-m", "trainer=debug", f"hydra.sweeper.storage=sqlite:///{db}",
         f"hydra.sweep.dir={root / 'sweep'}", "hydra.sweeper.seed=0",
         # every trial after the baseline from the scripted LLM (damage control has its tests)
         "agent.adaptive_share=false", *args],
        cwd=root, env=env, timeout=600,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    return Sweep(proc=proc, study=study, requests=server.requests, root=root)


def baseline_params() -> dict[str, Any]:
    """The configured defaults of the default search space, composed like the CLI does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from hpo.train import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    names = list(cfg.hydra.sweeper.params)
    out = {n: OmegaConf.select(cfg, n) for n in names if n != "optimizer"}
    out["optimizer"] = cfg.hydra.runtime.choices.optimizer
    return out


def trial_note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    from optuna_dashboard import get_note

    return get_note(optuna.trial.Trial(study, trial._trial_id))


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def openai_sweep(server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """5 trials in 2 slots: baseline, then two batches of two scripted proposals."""
    server.reset()
    server.responder = ByRole([[P1, P2], [P3, P4]])
    env = clean_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=server.openai_base_url)
    return run_sweep(server, tmp_path_factory.mktemp("openai"), env, "agent=openai",
                     "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2")


@pytest.fixture(scope="module")
def claude_sweep(server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    server.reset()
    server.responder = ByRole([[P1], [P2]])
    env = clean_env(ANTHROPIC_API_KEY=ANTHROPIC_KEY,
                    ANTHROPIC_BASE_URL=server.anthropic_base_url)
    return run_sweep(server, tmp_path_factory.mktemp("claude"), env, "agent=claude",
                     "hydra.sweeper.n_trials=3")


# --------------------------------------------------------------------------- agent=openai


@pytest.mark.slow
def test_openai_trials_are_baseline_then_the_proposals(openai_sweep: Sweep) -> None:
    trials = openai_sweep.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert trials[0].params == baseline_params()
    assert trials[0].user_attrs["hpo:source"] == "baseline"
    for t, p in zip(trials[1:], [P1, P2, P3, P4], strict=True):
        assert t.params == p  # exactly the fake server's proposals
        assert t.user_attrs["hpo:source"] == "llm"
        assert t.user_attrs["hpo:rationale"] == rationale(p)
    # the values reached the training: the trial's composed config has them
    for t in trials[1:]:
        out = trial_output_dir(t.number, t.user_attrs, openai_sweep.study.user_attrs)
        cfg = yaml.safe_load((Path(str(out)) / ".hydra/config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == t.params["optimizer.lr"]
        assert cfg["optimizer"]["weight_decay"] == t.params["optimizer.weight_decay"]
        assert cfg["data"]["batch_size"] == t.params["data.batch_size"]
        assert cfg["model"]["label_smoothing"] == t.params["model.label_smoothing"]
        target = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW",
                  "sgd": "torch.optim.SGD"}[t.params["optimizer"]]
        assert cfg["optimizer"]["_target_"] == target


@pytest.mark.slow
def test_openai_one_proposer_call_per_batch(openai_sweep: Sweep) -> None:
    reqs = openai_sweep.proposer()
    assert len(reqs) == 2  # 4 LLM trials in 2 slots
    for r in reqs:
        assert r.kind == "openai" and r.model == "gpt-4o-mini"
        assert r.api_key == OPENAI_KEY
        assert "<n_proposals>2</n_proposals>" in r.last_user_text
    ua = [t.user_attrs for t in openai_sweep.trials[1:]]
    assert [a["hpo:batch"] for a in ua] == ["1/2", "2/2", "1/2", "2/2"]
    assert ua[0]["hpo:llm_call"] == ua[1]["hpo:llm_call"] != ua[2]["hpo:llm_call"]
    assert ua[2]["hpo:llm_call"] == ua[3]["hpo:llm_call"]


@pytest.mark.slow
def test_openai_requests_carry_the_stored_history(openai_sweep: Sweep) -> None:
    first, second = openai_sweep.proposer()
    trials = openai_sweep.trials
    # the first call was prefetched before the baseline trial existed
    assert "no completed trial yet" in first.last_user_text
    assert "#0 " not in first.last_user_text
    history = second.last_user_text.split("<history>", 1)[1].split("</history>", 1)[0]
    # the second call came when two of trials 0-2 had finished (the slots' order may vary)
    done = [t for t in trials[:3] if f"#{t.number} COMPLETE" in history]
    assert len(done) == 2, history
    for t in done:  # with their stored values
        assert f"{t.value:.6g}" in history
    (busy,) = [t for t in trials[:3] if t not in done]
    assert f"#{busy.number} RUNNING" in history  # and the one still in flight
    assert "src=\"baseline\"" in history and "src=\"llm\"" in history
    for t in trials[:3]:  # params as one row each, lr first, with its log10
        assert f"| {t.params['optimizer.lr']:.3g}[" in history, history


@pytest.mark.slow
def test_openai_provenance_costs_and_totals_in_storage(openai_sweep: Sweep) -> None:
    study, trials = openai_sweep.study, openai_sweep.trials
    n_analyst = sum(is_analyst(r) for r in openai_sweep.requests)
    ua = [t.user_attrs for t in trials[1:]]
    assert ua[0]["hpo:tokens_in"] == PROPOSER_USAGE[0]  # nothing finished: no analyst yet
    assert ua[0]["hpo:tokens_out"] == PROPOSER_USAGE[1]
    assert ua[2]["hpo:tokens_in"] == PROPOSER_USAGE[0] + n_analyst * ANALYST_USAGE[0]
    assert ua[1]["hpo:tokens_in"] == ua[3]["hpo:tokens_in"] == 0  # the batch's usage rides
    assert ua[0]["hpo:cost_usd"] > 0 and ua[0]["hpo:latency_s"] >= 0  # on its first trial
    totals = study.user_attrs
    assert totals["hpo:llm_calls_total"] == len(openai_sweep.requests) == 2 + n_analyst
    assert totals["hpo:tokens_in_total"] == sum(a["hpo:tokens_in"] for a in ua)
    assert totals["hpo:tokens_out_total"] == sum(a["hpo:tokens_out"] for a in ua)
    assert totals["hpo:cost_usd_total"] == pytest.approx(sum(a["hpo:cost_usd"] for a in ua))
    # gpt-4o-mini: $0.15 / $0.60 per million tokens
    expected = (2 * 1000 + n_analyst * 500) * 0.15e-6 + (2 * 100 + n_analyst * 50) * 0.6e-6
    assert totals["hpo:cost_usd_total"] == pytest.approx(expected, rel=1e-3)
    assert totals.get("hpo:fallback_total", 0) == 0


@pytest.mark.slow
def test_openai_dashboard_notes(openai_sweep: Sweep) -> None:
    from optuna_dashboard import get_note

    study = openai_sweep.study
    for t in openai_sweep.trials[1:]:
        note = trial_note(study, t)
        assert "**llm**" in note and t.user_attrs["hpo:llm_call"] in note
        assert t.user_attrs["hpo:rationale"] in note
    assert get_note(study).startswith("## Diagnosis")


@pytest.mark.slow
def test_openai_prompt_dumps_hold_every_call_and_no_key(openai_sweep: Sweep) -> None:
    dumps = sorted((openai_sweep.root / "sweep" / "llm").glob("call-*.json"))
    assert len(dumps) == len(openai_sweep.requests)
    roles = [json.loads(p.read_text())["role"] for p in dumps]
    assert roles.count("proposer") == 2
    for p in dumps:
        assert OPENAI_KEY not in p.read_text()
    assert OPENAI_KEY not in openai_sweep.proc.stdout + openai_sweep.proc.stderr


# --------------------------------------------------------------------------- agent=claude


@pytest.mark.slow
def test_claude_sweep(claude_sweep: Sweep) -> None:
    trials = claude_sweep.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].params == baseline_params()
    assert [t.params for t in trials[1:]] == [P1, P2]
    assert [t.user_attrs["hpo:source"] for t in trials] == ["baseline", "llm", "llm"]
    assert {r.kind for r in claude_sweep.requests} == {"anthropic"}
    assert {r.api_key for r in claude_sweep.requests} == {ANTHROPIC_KEY}
    reqs = claude_sweep.proposer()
    assert len(reqs) == 2 and all(r.model == "claude-sonnet-4-6" for r in reqs)
    assert all(r.tool_name for r in reqs)  # structured output through a forced tool
    assert "<n_proposals>1</n_proposals>" in reqs[0].last_user_text
    assert f"{trials[0].value:.6g}" in reqs[1].last_user_text
    totals = claude_sweep.study.user_attrs
    assert totals["hpo:llm_calls_total"] == len(claude_sweep.requests)
    assert totals["hpo:cost_usd_total"] > 0
    text = claude_sweep.proc.stdout + claude_sweep.proc.stderr
    assert ANTHROPIC_KEY not in text
    for p in (claude_sweep.root / "sweep" / "llm").glob("*"):
        assert ANTHROPIC_KEY not in p.read_text()


# --------------------------------------------------------------------------- no credentials


@pytest.mark.slow
def test_auto_without_keys_warns_once_and_never_claims_llm(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.reset()
    # a reachable endpoint but no key anywhere: nothing may be sent
    env = clean_env(OPENAI_BASE_URL=server.openai_base_url,
                    ANTHROPIC_BASE_URL=server.anthropic_base_url)
    sweep = run_sweep(server, tmp_path, env, "hydra.sweeper.n_trials=3")  # agent=auto
    assert server.requests == []
    trials = sweep.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    sources = [t.user_attrs["hpo:source"] for t in trials]
    assert sources == ["baseline", "fallback", "fallback"]
    assert {t.user_attrs["hpo:fallback_reason"] for t in trials[1:]} == {"no_llm"}
    out = sweep.proc.stdout + sweep.proc.stderr
    assert out.count("No LLM credentials found") == 1
    assert "NOT from an LLM" in out
    assert sweep.study.user_attrs.get("hpo:llm_calls_total", 0) == 0
