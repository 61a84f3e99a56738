"""The provider layer through the real SDK clients against the loopback fake server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import BaseModel

from hpo.errors import ConfigError
from hpo.llm import (
    AUTO_ORDER,
    PRESETS,
    AnthropicClient,
    LLMAuthError,
    LLMClient,
    LLMError,
    LLMMalformedReply,
    LLMRateLimited,
    LLMRefusal,
    LLMServerError,
    LLMTimeout,
    Message,
    OpenAIClient,
    cost_usd,
    load_dotenv_once,
    make_client,
    parse_reply,
    price_for,
    resolve_auto,
)
from hpo.testing import FakeLLMServer, FakeReply

KEY = "sk-test-SECRET-4f9a8b7c6d"
SPACE = '{"lr": {"type": "float", "low": 0.0001, "high": 0.1, "log": true}}'
PROMPT = f"Propose.\n<search_space>{SPACE}</search_space>\n<n_proposals>2</n_proposals>"


class Proposal(BaseModel):
    params: dict[str, float | int | str]
    rationale: str


class ProposerReply(BaseModel):
    """Proposals for the next trials."""

    proposals: list[Proposal]
    diagnosis: str
    step: Literal["small", "medium", "large"]


class Answer(BaseModel):
    answer: int
    note: str = ""


ANSWER: dict[str, object] = {"answer": 42, "note": "ok"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=3) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeLLMServer) -> None:
    server.reset()


def build(
    kind: str, server: FakeLLMServer, *, max_retries: int = 1, timeout_s: float = 5.0, **kw: object
) -> LLMClient:
    if kind == "anthropic":
        return AnthropicClient(
            model="claude-sonnet-4-6",
            api_key=KEY,
            base_url=server.anthropic_base_url,
            max_retries=max_retries,
            timeout_s=timeout_s,
            **kw,
        )
    return OpenAIClient(
        model="gpt-4o-mini",
        api_key=KEY,
        base_url=server.openai_base_url,
        max_retries=max_retries,
        timeout_s=timeout_s,
        **kw,
    )


KINDS = ["anthropic", "openai"]


def ask(client: LLMClient, model: type[BaseModel] = Answer, text: str = "question"):
    return client.complete([Message("user", text)], model, system="You are terse.")


# ---------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("kind", KINDS)
def test_structured_reply_from_random_proposer(kind: str, server: FakeLLMServer) -> None:
    done = ask(build(kind, server), ProposerReply, PROMPT)
    reply = done.reply
    assert isinstance(reply, ProposerReply)
    assert len(reply.proposals) == 2
    for p in reply.proposals:
        assert 1e-4 <= float(p.params["lr"]) <= 0.1
    assert done.provider == kind
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.latency_s > 0
    (req,) = server.requests
    assert req.kind == kind
    assert req.system == "You are terse."
    assert req.schema is not None and "proposals" in req.schema["properties"]


def test_anthropic_request_forces_the_tool(server: FakeLLMServer) -> None:
    done = ask(build("anthropic", server, temperature=0.3))
    assert done.extra["stop_reason"] == "tool_use"
    (req,) = server.requests
    assert req.body["tool_choice"] == {"type": "tool", "name": "Answer"}
    assert req.body["tools"][0]["input_schema"]["required"] == ["answer"]
    assert req.body["temperature"] == 0.3
    assert req.api_key == KEY


def test_anthropic_falls_back_when_forced_tool_or_temperature_is_rejected(
    server: FakeLLMServer,
) -> None:
    client = build("anthropic", server, temperature=0.3, max_retries=0)
    server.script(
        [
            FakeReply(status=400, error_message="tool_choice: forced tool use is not supported"),
            FakeReply(status=400, error_message="temperature is not supported for this model"),
        ]
    )
    assert ask(client).reply.answer  # third request succeeds with neither setting
    first, second, third = (r.body for r in server.requests)
    assert first["tool_choice"]["type"] == "tool" and "temperature" in first
    assert second["tool_choice"] == {"type": "auto"} and "temperature" in second
    assert "temperature" not in third
    assert "calling the tool `Answer`" in server.requests[2].system
    # the client remembers: the next call goes straight to the working shape
    ask(client)
    assert server.requests[3].body["tool_choice"] == {"type": "auto"}
    # any other 400 is an error, not a fallback
    server.script([FakeReply(status=400, error_message="messages: too long")])
    with pytest.raises(LLMError, match="400"):
        ask(client)


def test_anthropic_models_without_forced_tools_start_in_auto(server: FakeLLMServer) -> None:
    client = AnthropicClient(
        model="claude-sonnet-5-5", api_key=KEY, base_url=server.url, effort="low"
    )
    assert ask(client).reply.answer
    body = server.requests[0].body
    assert body["tool_choice"] == {"type": "auto"}
    assert body["output_config"] == {"effort": "low"}


def test_openai_request_uses_json_schema(server: FakeLLMServer) -> None:
    ask(build("openai", server))
    body = server.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Answer"
    assert body["response_format"]["json_schema"]["strict"] is False
    assert body["max_tokens"] == 2048
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_openai_json_object_sends_the_schema_and_puts_it_in_system(
    server: FakeLLMServer,
) -> None:
    server.script([ANSWER])
    done = ask(build("openai", server, structured_output="json_object"))
    assert done.reply == Answer.model_validate(ANSWER)
    req = server.requests[0]
    assert req.body["response_format"] == {
        "type": "json_object", "schema": Answer.model_json_schema()
    }
    assert "JSON" in req.system and '"answer"' in req.system
    assert done.structured_output == "json_object"


@pytest.mark.parametrize("kind", KINDS)
def test_usage_and_cost(kind: str, server: FakeLLMServer) -> None:
    server.script([FakeReply(json_obj=ANSWER, usage=(1000, 2000))])
    done = ask(build(kind, server))
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1000, 2000)
    p_in, p_out = price_for(done.model)
    assert p_in > 0
    assert done.usage.cost_usd == pytest.approx((1000 * p_in + 2000 * p_out) / 1e6)
    # config overrides win over the table
    server.script([FakeReply(json_obj=ANSWER, usage=(1_000_000, 1_000_000))])
    client = build(kind, server, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    assert ask(client).usage.cost_usd == pytest.approx(3.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "text",
    [
        '{"answer": 42, "note": "ok"}',
        'Sure! Here it is: {"answer": 42, "note": "ok"} Hope that helps.',
        'Reasoning first.\n```json\n{"answer": 42, "note": "ok",}\n```\n',
    ],
    ids=["raw", "prose", "fence-trailing-comma"],
)
def test_text_replies_are_parsed(kind: str, text: str, server: FakeLLMServer) -> None:
    server.script([FakeReply(text=text)])
    assert ask(build(kind, server)).reply == Answer.model_validate(ANSWER)


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_is_retried_by_the_sdk(kind: str, server: FakeLLMServer) -> None:
    server.script([FakeReply.rate_limited(0.01), ANSWER])
    assert ask(build(kind, server, max_retries=1)).reply.answer == 42
    assert len(server.requests) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_without_retries(kind: str, server: FakeLLMServer) -> None:
    server.script([FakeReply.rate_limited(0.01), ANSWER])
    with pytest.raises(LLMRateLimited, match="429"):
        ask(build(kind, server, max_retries=0))
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(kind: str, status: int, server: FakeLLMServer) -> None:
    server.script([FakeReply.server_error(status)] * 2)
    with pytest.raises(LLMServerError, match=str(status)):
        ask(build(kind, server, max_retries=1))
    assert len(server.requests) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_timeout(kind: str, server: FakeLLMServer) -> None:
    server.script([FakeReply.timeout(2.0)])
    with pytest.raises(LLMTimeout):
        ask(build(kind, server, max_retries=0, timeout_s=0.5))
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "behaviour",
    [
        FakeReply(text="I think the learning rate should go up."),
        FakeReply(raw_body="{not json"),
        FakeReply(json_obj={"answer": "forty-two"}),
        FakeReply(json_obj={"note": "missing answer"}),
    ],
    ids=["prose-only", "broken-body", "wrong-type", "missing-field"],
)
def test_malformed(kind: str, behaviour: FakeReply, server: FakeLLMServer) -> None:
    server.script([behaviour])
    with pytest.raises(LLMMalformedReply) as info:
        ask(build(kind, server, max_retries=0))
    assert "\n" not in str(info.value)
    if behaviour.json_obj is not None:
        assert "answer" in str(info.value)
        assert info.value.usage.input_tokens > 0  # the failed call's tokens are still counted


@pytest.mark.parametrize("kind", KINDS)
def test_refusal(kind: str, server: FakeLLMServer) -> None:
    server.script([FakeReply(refusal="I can't help with that.")])
    with pytest.raises(LLMRefusal, match="can't help"):
        ask(build(kind, server))


@pytest.mark.parametrize("kind", KINDS)
def test_key_is_sent_but_never_in_messages(kind: str, server: FakeLLMServer) -> None:
    # A server that echoes the key in its error body must not leak it through our exception.
    server.script([FakeReply(status=401, error_message=f"invalid x-api-key {KEY}")])
    with pytest.raises(LLMAuthError) as info:
        ask(build(kind, server, max_retries=0))
    assert server.requests[0].api_key == KEY
    assert KEY not in server.requests[0].redacted().headers.values()
    err = info.value
    assert KEY not in str(err)
    assert err.__cause__ is None or KEY not in str(err.__cause__)
    assert KEY not in repr(build(kind, server))


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        OpenAIClient(model="m", api_key="k", timeout_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        AnthropicClient(model="m", api_key="k", max_retries=-1)
    with pytest.raises(ValueError, match="model"):
        OpenAIClient(model="", api_key="k")


# ---------------------------------------------------------------------------- parsing & pricing


def test_parse_reply_variants() -> None:
    assert parse_reply('{"answer": 1}', Answer).answer == 1
    assert parse_reply('```\n{"answer": 2,}\n```', Answer).answer == 2
    assert parse_reply('x {"a": 1} then {"answer": 3}', Answer).answer == 3
    # a raw line break inside a string (grammar-constrained local servers emit them) is kept
    assert parse_reply('{"note": "a}}}\n\nb", "answer": 4}', Answer).answer == 4
    with pytest.raises(LLMMalformedReply, match="no JSON object"):
        parse_reply("nothing here", Answer)
    with pytest.raises(LLMMalformedReply, match="empty"):
        parse_reply("  ", Answer)
    with pytest.raises(LLMMalformedReply, match="answer") as info:
        parse_reply('{"answer": [1]}', Answer)
    assert info.value.raw_text == '{"answer": [1]}'


def test_pricing_lookup() -> None:
    assert price_for("gpt-4o-mini") == (0.15, 0.6)
    assert price_for("gpt-4o-2024-08-06") == price_for("gpt-4o")
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-5")
    assert price_for("anthropic/claude-sonnet-4.5") == price_for("claude-sonnet-4-5")
    assert price_for("totally-unknown") == (0.0, 0.0)
    assert cost_usd("x", 10, 10, price_in_per_mtok=1e6, price_out_per_mtok=0) == 10.0


# ---------------------------------------------------------------------------- presets


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """No provider keys or endpoints in the environment; CWD is an empty tmp dir."""
    names = {p.api_key_env for p in PRESETS.values()}
    names |= {e for p in PRESETS.values() for e in p.base_url_envs}
    names |= {"HPO_LOCAL_MODEL", "ANTHROPIC_AUTH_TOKEN"}
    for name in names:
        monkeypatch.setenv(name, "x")  # recorded, so teardown removes what .env may add
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ((), None),
        (("OPENROUTER_API_KEY",), "openrouter"),
        (("GEMINI_API_KEY", "OPENROUTER_API_KEY"), "gemini"),
        (("DEEPSEEK_API_KEY", "GEMINI_API_KEY"), "deepseek"),
        (("OPENAI_API_KEY", "DEEPSEEK_API_KEY"), "openai"),
        (("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"), "claude"),
    ],
)
def test_resolve_auto_order(clean_env: pytest.MonkeyPatch, present, expected) -> None:
    for name in present:
        clean_env.setenv(name, "k")
    assert resolve_auto() == expected
    assert AUTO_ORDER[0] == "claude"


@pytest.mark.parametrize("preset", ["claude", "openai", "deepseek", "gemini", "openrouter"])
def test_explicit_provider_without_key(clean_env: pytest.MonkeyPatch, preset: str) -> None:
    env = PRESETS[preset].api_key_env
    with pytest.raises(ConfigError) as info:
        make_client(provider=preset)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"agent={preset} needs {env}: export it or put it in .env")
    assert "agent=none" in msg


def test_unknown_and_auto_without_keys(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        make_client(provider="gpt-maker")
    with pytest.raises(ConfigError, match="agent=auto found no API key"):
        make_client(provider="auto")


def test_dotenv_is_read(clean_env: pytest.MonkeyPatch, tmp_path, server: FakeLLMServer) -> None:
    (tmp_path / ".env").write_text(
        f"DEEPSEEK_API_KEY={KEY}\nHPO_DEEPSEEK_BASE_URL={server.openai_base_url}\n"
        "OPENAI_API_KEY=from-dotenv\n"
    )
    clean_env.setenv("OPENAI_API_KEY", "from-env")  # existing env wins over .env
    assert load_dotenv_once() is True
    assert load_dotenv_once() is False  # once per file
    assert os.environ["OPENAI_API_KEY"] == "from-env"
    assert os.environ["DEEPSEEK_API_KEY"] == KEY
    assert resolve_auto() == "openai"
    client = make_client(provider="deepseek", max_retries=0)
    server.script([ANSWER])
    assert ask(client).reply.answer == 42
    assert server.requests[0].api_key == KEY
    assert server.requests[0].model == "deepseek-chat"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_reaches_the_fake_server(
    clean_env: pytest.MonkeyPatch, preset: str, server: FakeLLMServer
) -> None:
    p = PRESETS[preset]
    if p.key_required:
        clean_env.setenv(p.api_key_env, KEY)
    url = server.anthropic_base_url if p.kind == "anthropic" else server.openai_base_url
    clean_env.setenv(f"HPO_{preset.upper()}_BASE_URL", url)
    client = make_client(provider=preset, max_retries=0, timeout_s=5)
    assert client.provider == preset and client.model == p.model
    done = ask(client, ProposerReply, PROMPT)
    assert len(done.reply.proposals) == 2
    (req,) = server.requests
    assert req.kind == ("anthropic" if p.kind == "anthropic" else "openai")  # gemini: chat
    assert req.model == p.model
    if p.key_required:
        assert req.api_key == KEY
    if preset == "openai":
        assert "max_completion_tokens" in req.body and "max_tokens" not in req.body


def test_explicit_overrides(clean_env: pytest.MonkeyPatch, server: FakeLLMServer) -> None:
    clean_env.setenv("MY_KEY", KEY)
    client = make_client(
        provider="openai",
        model="gpt-4.1-mini",
        api_key_env="MY_KEY",
        base_url=server.openai_base_url,
        structured_output="json_object",
        max_retries=0,
    )
    server.script([ANSWER])
    ask(client)
    req = server.requests[0]
    assert req.model == "gpt-4.1-mini" and req.api_key == KEY
    assert req.body["response_format"]["type"] == "json_object"
    with pytest.raises(ConfigError, match="no LLM"):
        make_client(provider="none")
