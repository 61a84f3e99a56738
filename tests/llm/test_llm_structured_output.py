"""Structured output in every form, and auto switching once, with the real SDK clients against
the loopback fake server (including its llama-cpp-python flavor)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from hpo.agents.models import ProposerReply
from hpo.llm import (
    AnthropicClient,
    LLMBadRequest,
    LLMClient,
    LLMMalformedReply,
    LLMServerError,
    Message,
    OpenAIClient,
)
from hpo.testing import FakeLLMServer, FakeReply

KEY = "sk-structured-KEY-5566778899"
SPACE = '{"lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": true}}'
PROMPT = f"Propose.\n<search_space>{SPACE}</search_space>\n<n_proposals>2</n_proposals>"


class Verdict(BaseModel):
    """A verdict."""

    verdict: Literal["better", "worse"]
    confidence: float


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=5) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeLLMServer) -> None:
    server.reset()


def openai(server: FakeLLMServer, **kw: Any) -> OpenAIClient:
    kw.setdefault("max_retries", 0)
    return OpenAIClient(model="local-model", api_key=KEY, base_url=server.openai_base_url,
                        provider="local", **kw)


def anthropic(server: FakeLLMServer, **kw: Any) -> AnthropicClient:
    kw.setdefault("max_retries", 0)
    return AnthropicClient(model="claude-sonnet-4-6", api_key=KEY,
                           base_url=server.anthropic_base_url, **kw)


def ask(client: LLMClient, model: type[BaseModel] = ProposerReply, **kw: Any) -> Any:
    return client.complete([Message("user", PROMPT)], model, system="You are terse.", **kw)


def switch_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "rejects structured output" in r.getMessage()]


# ---------------------------------------------------------------------------- each form


@pytest.mark.parametrize("form", ["json_schema", "json_object", "tool", "none"])
def test_each_openai_form_sends_the_schema_its_way(server: FakeLLMServer, form: str) -> None:
    done = ask(openai(server, structured_output=form))
    assert len(done.reply.proposals) == 2
    assert done.structured_output == form
    (req,) = server.requests
    assert req.form == form
    body = req.body
    schema = ProposerReply.model_json_schema()
    if form == "json_schema":
        assert body["response_format"]["json_schema"]["schema"] == schema
        assert "JSON schema" not in req.system
    elif form == "json_object":
        assert body["response_format"] == {"type": "json_object", "schema": schema}
        assert "JSON" in req.system and '"proposals"' in req.system  # json_object needs "JSON"
    elif form == "tool":
        assert body["tools"][0]["function"]["parameters"] == schema
        assert body["tool_choice"] == {"type": "function", "function": {"name": "ProposerReply"}}
        assert "response_format" not in body
    else:
        assert "response_format" not in body and "tools" not in body
        assert '"proposals"' in req.system


@pytest.mark.parametrize("form", ["tool", "none"])
def test_each_anthropic_form(server: FakeLLMServer, form: str) -> None:
    done = ask(anthropic(server, structured_output=form))
    assert len(done.reply.proposals) == 2 and done.structured_output == form
    (req,) = server.requests
    assert req.form == form
    if form == "none":
        assert "tools" not in req.body and '"proposals"' in req.system


def test_an_explicit_schema_is_sent_and_the_reply_still_validated(server: FakeLLMServer) -> None:
    schema = ProposerReply.model_json_schema()
    schema["properties"]["proposals"]["minItems"] = schema["properties"]["proposals"][
        "maxItems"] = 3
    done = ask(openai(server), schema=schema)
    assert server.requests[0].body["response_format"]["json_schema"]["schema"] == schema
    assert len(done.reply.proposals) == 3  # the fake filled the schema that was sent
    server.script([{"verdict": "maybe", "confidence": 2}])
    with pytest.raises(LLMMalformedReply, match="verdict"):
        ask(openai(server), Verdict, schema={"type": "object"})


def test_unsupported_forms_are_refused_at_construction(server: FakeLLMServer) -> None:
    with pytest.raises(ValueError, match=r"agent\.structured_output=json_schema is not available"):
        anthropic(server, structured_output="json_schema")
    with pytest.raises(ValueError, match="use one of auto, json_schema"):
        openai(server, structured_output="grammar")


# ---------------------------------------------------------------------------- auto


def test_auto_switches_once_on_llama_cpp_python(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.flavor = "llama_cpp_python"
    client = openai(server, max_retries=2)
    caplog.set_level(logging.WARNING, logger="hpo.llm")
    first = ask(client)
    # json_schema answered HTTP 500; the SDK did not retry that (a rejection, not a fault),
    # and the same call went on at once with json_object + schema, which the server honours
    assert [r.form for r in server.requests] == ["json_schema", "json_object"]
    assert first.structured_output == "json_object" and len(first.reply.proposals) == 2
    assert first.request == server.requests[-1].body
    for _ in range(3):
        assert ask(client).structured_output == "json_object"
    assert [r.form for r in server.requests] == ["json_schema"] + ["json_object"] * 4
    (record,) = switch_records(caplog)
    text = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "using json_object" in text and "agent.structured_output=json_object" in text
    assert "'text' or 'json_object'" in text


def test_auto_walks_to_none_when_response_format_is_rejected(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    reject = FakeReply(status=400, error_message="response_format is not supported")
    server.script([reject, reject])
    caplog.set_level(logging.WARNING, logger="hpo.llm")
    client = openai(server)
    done = ask(client, Verdict)
    assert [r.form for r in server.requests] == ["json_schema", "json_object", "none"]
    assert done.structured_output == "none" and done.reply.confidence == 0.5
    ask(client, Verdict)
    assert len(server.requests) == 4 and server.requests[-1].form == "none"
    assert len(switch_records(caplog)) == 2


def test_a_pinned_form_never_switches(server: FakeLLMServer) -> None:
    server.flavor = "llama_cpp_python"
    client = openai(server, structured_output="json_schema", max_retries=2)
    for _ in range(2):
        with pytest.raises(LLMBadRequest) as info:
            ask(client)
        err = info.value
        assert err.permanent and err.kind == "bad_request"
        assert err.fix is not None and "agent.structured_output=auto" in err.fix
        assert err.request is not None and err.request["response_format"]["type"] == "json_schema"
    assert [r.form for r in server.requests] == ["json_schema", "json_schema"]


def test_a_server_fault_naming_nothing_is_not_a_switch(server: FakeLLMServer) -> None:
    server.script([FakeReply.server_error(500)])
    with pytest.raises(LLMServerError):
        ask(openai(server))
    assert [r.form for r in server.requests] == ["json_schema"]
    assert ask(openai(server)).structured_output == "json_schema"


def test_anthropic_auto_steps_from_tool_to_none(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hpo.llm")
    server.script([FakeReply(status=400, error_message="tools: this endpoint has no tools")])
    client = anthropic(server)
    assert ask(client).structured_output == "none"
    assert [r.form for r in server.requests] == ["tool", "none"]
    assert len(switch_records(caplog)) == 1
    server.script([FakeReply(status=400, error_message="tools: this endpoint has no tools")])
    with pytest.raises(LLMBadRequest) as info:  # pinned: the same rejection is final
        ask(anthropic(server, structured_output="tool"))
    assert info.value.fix is not None and "agent.structured_output" in info.value.fix


def test_a_server_ignoring_response_format_is_parsed_tolerantly(server: FakeLLMServer) -> None:
    server.flavor = "ignores_response_format"
    done = ask(openai(server))
    assert done.raw_text.startswith("Sure!") and len(done.reply.proposals) == 2
    verdict = ask(openai(server, structured_output="none"), Verdict)  # the prompt's schema
    assert verdict.reply.verdict == "better"


def test_json_object_without_schema_is_why_the_schema_is_sent(server: FakeLLMServer) -> None:
    """The llama-cpp-python flavor answers plain json_object with "some JSON"."""
    server.flavor = "llama_cpp_python"
    import urllib.request

    body = {"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"}}
    req = urllib.request.Request(server.openai_base_url + "/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        content = json.loads(json.loads(resp.read())["choices"][0]["message"]["content"])
    assert "proposals" not in content


# ---------------------------------------------------------------------------- exact request


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_the_exact_request_is_recorded_without_secrets(kind: str, server: FakeLLMServer) -> None:
    client = openai(server, temperature=0.4) if kind == "openai" else anthropic(
        server, temperature=0.4)
    done = ask(client)
    sent = server.requests[0].body
    assert done.request == sent
    assert KEY not in json.dumps(done.request)
    assert sent["temperature"] == 0.4 and sent["messages"][-1]["content"] == PROMPT
    # on failure the error carries the failed attempt's body
    server.script([FakeReply(status=400, error_message="messages: too long")])
    with pytest.raises(LLMBadRequest) as info:
        ask(client)
    assert info.value.request == server.requests[-1].body
