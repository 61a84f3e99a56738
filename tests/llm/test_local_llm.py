"""A real local LLM proposes trials (issue 11 item 2): ``python -m hpo.train -m agent=local``.

The ``local_llm`` fixture starts SmolLM2-135M-Instruct on llama-cpp-python's OpenAI-compatible
server (``scripts/llama-local.sh``: 127.0.0.1, built without native CPU tuning). One short
sweep of tiny trainings (``trainer=debug``) asks it for every trial after the baseline; the
tests read the study back from its SQLite storage and the audit dumps under
``<sweep dir>/llm/``.

What must hold for a model this small: at least 80% of the LLM calls give proposals with the
search space's parameters that become trials (source ``llm``, ``repaired`` or ``clamped``);
every other trial comes from the fallback with its reason recorded; the end of the sweep says
how many trials came from the LLM. This server takes ``{"type": "json_object", "schema": ...}``
and answers ``json_schema`` with HTTP 500, so the client must find that form itself
(``agent.structured_output=auto``, the default).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import optuna
import pytest

from _services import LocalLLM
from conftest import clean_env, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The fixture may build llama-cpp-python first (5-10 min on 2 cores); the sweep itself takes
# a few minutes on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.llm, pytest.mark.timeout(3600)]

N_TRIALS = 6
MIN_LLM_SHARE = 0.8
LLM_SOURCES = ("llm", "repaired", "clamped")


@dataclass
class LocalSweep:
    """One finished sweep against the local server."""

    stdout: str
    stderr: str
    study: optuna.Study
    dumps: dict[str, dict[str, Any]]  # "call-0003" -> the audit dump of that LLM request

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.trials

    def source(self, trial: optuna.trial.FrozenTrial) -> str:
        return str(trial.user_attrs.get("hpo:source", ""))


@pytest.fixture(scope="module")
def local_sweep(local_llm: LocalLLM, tmp_path_factory: pytest.TempPathFactory) -> LocalSweep:
    """``N_TRIALS`` trials, one slot: the baseline, then one LLM call per trial.

    ``agent.chain=single`` (the proposer alone) keeps the call count to one per trial;
    ``agent.adaptive_share=false`` keeps damage control from handing trials to the classical
    sampler, so that every trial after the baseline asks the LLM; the generous ``timeout_s``
    fits a CPU server that shares 2 cores with the trainings.
    """
    root = tmp_path_factory.mktemp("local_llm")
    db = root / "s.db"
    sweep_dir = root / "sweep"
    env = clean_env(HPO_LOCAL_BASE_URL=local_llm.base_url)
    proc = run_cli(
        ["-m", "hpo.train", "-m", "agent=local", f"agent.model={local_llm.model}",
         "agent.chain=single", "agent.adaptive_share=false", "agent.timeout_s=300",
         "agent.max_retries=1",
         "trainer=debug", f"hydra.sweeper.n_trials={N_TRIALS}", "hydra.sweeper.n_jobs=1",
         f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep_dir}",
         "hydra.sweeper.seed=0"],
        cwd=root, env=env, timeout=3000,
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    dumps = {}
    for path in sorted((sweep_dir / "llm").glob("call-*.json")):
        call = re.match(r"call-\d+", path.name)
        assert call is not None, path
        dumps[call.group(0)] = json.loads(path.read_text())
    return LocalSweep(stdout=proc.stdout, stderr=proc.stderr, study=study, dumps=dumps)


def _find_key(obj: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a JSON document."""
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found += _find_key(v, key)
    elif isinstance(obj, list):
        for v in obj:
            found += _find_key(v, key)
    return found


def test_sweep_completes_with_the_llm_asked(local_sweep: LocalSweep) -> None:
    trials = local_sweep.trials
    assert len(trials) == N_TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert local_sweep.source(trials[0]) == "baseline"
    # Every later trial went to the LLM first: none was left to the fallback unasked.
    for t in trials[1:]:
        assert local_sweep.source(t) in (*LLM_SOURCES, "fallback"), t.user_attrs
        assert t.user_attrs.get("hpo:fallback_reason") not in ("no_llm", "startup"), t.user_attrs
    assert int(local_sweep.study.user_attrs.get("hpo:llm_calls_total", 0)) >= N_TRIALS - 1


def test_most_llm_calls_become_trials(local_sweep: LocalSweep) -> None:
    """>= 80% of the chain's calls give proposals that become trials; the rest fall back
    with their reason recorded."""
    trials = local_sweep.trials[1:]
    from_llm = [t for t in trials if local_sweep.source(t) in LLM_SOURCES]
    fallback = [t for t in trials if local_sweep.source(t) == "fallback"]
    for t in fallback:
        assert t.user_attrs.get("hpo:fallback_reason"), f"trial {t.number}: no fallback reason"
    good_calls = {t.user_attrs["hpo:llm_call"] for t in from_llm}
    failed_calls = [t for t in fallback
                    if str(t.user_attrs["hpo:fallback_reason"]).startswith("llm_error")
                    or t.user_attrs["hpo:fallback_reason"] == "no_proposal"]
    share = len(good_calls) / max(1, len(good_calls) + len(failed_calls))
    summary = {t.number: (local_sweep.source(t), t.user_attrs.get("hpo:fallback_reason"))
               for t in trials}
    assert share >= MIN_LLM_SHARE, f"{share:.0%} of the LLM calls became trials: {summary}"


def test_llm_trials_come_from_schema_valid_replies(local_sweep: LocalSweep) -> None:
    """The reply behind every LLM trial is one JSON object whose proposals set exactly the
    search space's parameters, categorical ones to listed choices."""
    space = local_sweep.trials[0].distributions
    for t in local_sweep.trials[1:]:
        if local_sweep.source(t) not in LLM_SOURCES:
            continue
        dump = local_sweep.dumps.get(t.user_attrs["hpo:llm_call"])
        assert dump is not None, f"trial {t.number}: no dump of {t.user_attrs['hpo:llm_call']}"
        # strict=False: a raw control character inside a string is kept, as hpo's parser does
        reply = json.loads(dump["raw_text"], strict=False)
        assert reply["proposals"], dump["raw_text"]
        for proposal in reply["proposals"]:
            assert set(proposal["params"]) == set(space), proposal
            for name, dist in space.items():
                if isinstance(dist, optuna.distributions.CategoricalDistribution):
                    assert proposal["params"][name] in dist.choices, (name, proposal)


def test_dumps_hold_the_request_in_the_form_this_server_takes(local_sweep: LocalSweep) -> None:
    """Each audit dump is the exact request: llama-cpp-python's server honours
    ``json_object`` with a schema built from the search space."""
    names = set(local_sweep.trials[0].distributions)
    assert len(local_sweep.dumps) == int(local_sweep.study.user_attrs["hpo:llm_calls_total"])
    answered = [d for d in local_sweep.dumps.values() if d.get("raw_text")]
    assert answered, "no LLM call was answered"
    for dump in answered:
        formats = [f for f in _find_key(dump, "response_format") if isinstance(f, dict)]
        assert formats, f"{dump['call']}: the dump has no response_format"
        assert formats[-1].get("type") == "json_object", formats[-1]
        schema_text = json.dumps(formats[-1].get("schema"))
        assert all(f'"{name}"' in schema_text for name in names), formats[-1]


def test_summary_says_how_many_trials_came_from_the_llm(local_sweep: LocalSweep) -> None:
    """"k of n trials came from the LLM (r repaired, c clamped), f from the fallback ...",
    with the counts of the storage."""
    sources = [local_sweep.source(t) for t in local_sweep.trials]
    text = local_sweep.stdout + local_sweep.stderr
    match = re.search(r"(\d+) of (\d+) trials came from the LLM \((\d+) repaired, (\d+) "
                      r"clamped\), (\d+) from the fallback", text)
    assert match, f"no 'k of n trials came from the LLM' line in:\n{text[-3000:]}"
    expected = (sum(s in LLM_SOURCES for s in sources), N_TRIALS, sources.count("repaired"),
                sources.count("clamped"), sources.count("fallback"))
    assert tuple(int(g) for g in match.groups()) == expected, match.group(0)


def test_server_uses_the_models_own_chat_template(local_llm: LocalLLM) -> None:
    """No chat format is forced: the server formats prompts with the GGUF's template."""
    text = (local_llm.root / "log" / "server.log").read_text(errors="replace")
    assert "Using gguf chat template" in text
