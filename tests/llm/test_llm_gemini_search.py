"""Gemini's web search: the researcher's calls go to the native ``generateContent`` API with
the ``google_search`` tool; real SDK transport, real HTTP, the loopback fake server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from pydantic import BaseModel

from hpo.agents import StudyView, build_chain
from hpo.llm import (
    PRESETS,
    LLMAuthError,
    LLMClient,
    LLMModelNotFound,
    LLMRateLimited,
    LLMRefusal,
    LLMServerError,
    LLMTimeout,
    LLMTooLarge,
    Message,
    make_client,
)
from hpo.secrets import redact
from hpo.space import ParamSpec
from hpo.testing import FakeLLMServer, FakeReply
from hpo.testing.fake_llm import FAKE_WEB_SOURCES

KEY = "AIza-gemini-test-KEY-0123456789"


class Remedies(BaseModel):
    """Remedies for the diagnosis."""

    remedies: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=4) as srv:
        yield srv


@pytest.fixture(autouse=True)
def env(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the Gemini key; its chat and native endpoints on the fake server; no ./.env."""
    monkeypatch.chdir(tmp_path)
    for p in PRESETS.values():
        monkeypatch.delenv(p.api_key_env, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("HPO_GEMINI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("HPO_GEMINI_NATIVE_BASE_URL", server.gemini_native_base_url)
    settle(lambda: server.active == 0)  # a reply the last test gave up on has ended
    server.reset()


def settle(cond: Callable[[], bool], limit_s: float = 30.0) -> bool:
    """Poll ``cond`` (a safety limit only: no timing is asserted)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and not cond():
        time.sleep(0.05)
    return cond()


def gemini(**kw: Any) -> LLMClient:
    kw.setdefault("max_retries", 0)
    return make_client(provider="gemini", **kw)


def search(client: LLMClient, **kw: Any) -> Any:
    return client.complete([Message("user", "list remedies for overfitting")], Remedies,
                           tools=["web_search"], **kw)


# ---------------------------------------------------------------------------- the request


def test_search_goes_to_generate_content_with_google_search(server: FakeLLMServer) -> None:
    client = gemini(temperature=0.4, max_tokens=900)
    assert client.server_tools == frozenset({"web_search"})
    server.script([FakeReply(json_obj={"remedies": ["weight decay"]}, usage=(31, 7))])
    done = search(client, system="Find remedies.")
    (req,) = server.requests
    assert req.kind == "gemini" and req.api == "generate_content"
    assert req.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert req.model == "gemini-2.0-flash"
    # the key in x-goog-api-key only: no Bearer header, and never in a redacted record
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    assert KEY not in str(req.redacted().headers)
    body = req.body
    assert body["tools"] == [{"google_search": {}}]
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "list remedies for overfitting"}]}
    ]
    assert body["generationConfig"] == {"maxOutputTokens": 900, "temperature": 0.4}
    assert "responseSchema" not in body["generationConfig"]  # JSON asked for in the prompt
    system = body["systemInstruction"]["parts"][0]["text"]
    assert system.startswith("Find remedies.") and '"remedies"' in system
    assert req.schema == Remedies.model_json_schema()  # the fake follows the prompt's schema
    # the reply: parsed tolerantly, its sources and token counts recorded
    assert done.reply.remedies == ["weight decay"]
    assert done.structured_output == "none" and done.request == body
    assert done.extra["web_searches"] == 1
    assert done.extra["web_sources"] == [{"uri": u, "title": t} for u, t in FAKE_WEB_SOURCES]
    assert (done.usage.input_tokens, done.usage.output_tokens) == (31, 7)
    assert done.provider == "gemini" and done.model == "gemini-2.0-flash"
    # the key was registered for redaction, like every provider's
    assert KEY not in redact(f"header x-goog-api-key: {KEY}")


def test_calls_without_tools_stay_on_the_openai_compatible_endpoint(
    server: FakeLLMServer,
) -> None:
    client = gemini()
    done = client.complete([Message("user", "list remedies")], Remedies)
    (req,) = server.requests
    assert req.kind == "openai" and req.api == "chat"
    assert req.api_key == KEY and done.reply.remedies
    assert "web_sources" not in done.extra


def test_prose_around_the_json_is_parsed(server: FakeLLMServer) -> None:
    server.script(["Found it.\n```json\n{\"remedies\": [\"dropout 0.3\"]}\n```\nSources above."])
    assert search(gemini()).reply.remedies == ["dropout 0.3"]


# ---------------------------------------------------------------------------- limits


def test_a_stalled_reply_is_cut_at_the_deadline(server: FakeLLMServer) -> None:
    server.script([FakeReply.stalled(after_bytes=5)])
    with pytest.raises(LLMTimeout) as info:
        search(gemini(timeout_s=2, max_retries=2))
    err = info.value
    assert "agent.timeout_s=2" in str(err) and err.fix and "agent.timeout_s" in err.fix
    assert err.request is not None and err.request["tools"] == [{"google_search": {}}]
    assert len(server.requests) == 1  # no retry past the deadline
    assert settle(lambda: server.active == 0 and server.disconnects == 1)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_reply_is_cut_at_the_cap(server: FakeLLMServer, chunked: bool) -> None:
    server.script([FakeReply.oversized(5_000_000, chunked=chunked)])
    with pytest.raises(LLMTooLarge) as info:
        search(gemini(timeout_s=30, max_reply_bytes=65536, max_retries=2))
    assert "agent.max_reply_bytes=65536" in str(info.value)
    assert info.value.fix and not info.value.permanent
    assert len(server.requests) == 1
    assert settle(lambda: server.active == 0 and server.disconnects == 1)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_permanent_with_a_fix(server: FakeLLMServer, status: int) -> None:
    server.script([FakeReply(status=status, error_message=f"API key not valid: {KEY}")])
    with pytest.raises(LLMAuthError) as info:
        search(gemini(max_retries=2))
    err = info.value
    assert err.permanent and err.fix and "GEMINI_API_KEY" in err.fix
    assert KEY not in str(err) and "API key not valid" in str(err)
    assert len(server.requests) == 1


def test_an_unknown_model_names_the_native_endpoint(server: FakeLLMServer) -> None:
    server.served_models = ["gemini-2.5-flash"]
    with pytest.raises(LLMModelNotFound) as info:
        search(gemini())
    err = info.value
    assert err.permanent and "HPO_GEMINI_NATIVE_BASE_URL" in (err.fix or "")
    assert server.requests[0].model == "gemini-2.0-flash"


@pytest.mark.parametrize(
    ("reply", "error"),
    [(FakeReply.rate_limited(), LLMRateLimited), (FakeReply.server_error(503), LLMServerError)],
    ids=["429", "503"],
)
def test_transient_errors_are_mapped_and_retried(
    server: FakeLLMServer, reply: FakeReply, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        server.script([reply])
        search(gemini())
    assert not getattr(info.value, "permanent", True)
    # the SDK's own retry answers inside the deadline
    server.reset()
    server.script([reply, {"remedies": ["mixup"]}])
    assert search(gemini(max_retries=1)).reply.remedies == ["mixup"]
    assert len(server.requests) == 2


def test_a_safety_stop_is_a_refusal(server: FakeLLMServer) -> None:
    server.script([FakeReply(refusal="cannot help with that")])
    with pytest.raises(LLMRefusal, match="SAFETY"):
        search(gemini())


# ---------------------------------------------------------------------------- a whole chain


def test_researcher_stage_searches_through_gemini(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    space = [
        ParamSpec(name="lr", distribution=FloatDistribution(1e-5, 1e-1, log=True)),
        ParamSpec(name="optimizer", distribution=CategoricalDistribution(["adam", "sgd"])),
    ]
    dists = {p.name: p.distribution for p in space}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/g.db", direction="maximize")
    overfit = {"train/loss": [1.0, 0.2, 0.05], "val/loss": [1.0, 0.7, 0.9]}
    for value, lr, opt in ((0.8, 1e-3, "adam"), (0.6, 5e-2, "sgd"), (0.7, 3e-4, "adam")):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=value, params={"lr": lr, "optimizer": opt},
            distributions=dists, intermediate_values={0: value - 0.1, 1: value},
            user_attrs={"curves": overfit},
        ))
    view = StudyView(space=space, directions=["maximize"], objective_names=["val/acc"],
                     trials=study.get_trials(), n_proposals=2, context={"task": "classify"})
    chain = build_chain({"provider": "gemini", "chain": "single", "researcher": True,
                         "timeout_s": 10, "max_retries": 0, "dump_prompts": False})
    assert chain is not None
    result = chain.propose(view)
    research, proposer = server.requests
    assert research.kind == "gemini" and research.server_tools == ("web_search",)
    assert research.headers["x-goog-api-key"] == KEY
    assert "ResearchReply" in research.system or '"remedies"' in research.system
    assert proposer.api == "chat"
    assert [c.role for c in result.calls] == ["researcher", "proposer"]
    first = result.calls[0]
    assert first.error is None and not first.note and first.provider == "gemini"
    assert first.request == research.body and first.structured_output == "none"
    remedies = proposer.last_user_text.split("<remedies>", 1)[1]
    assert remedies.lstrip().startswith('- "fake remed')
    assert len(result.proposals) == 2
