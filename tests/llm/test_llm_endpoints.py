"""Where a client goes (agent.base_url and the variables), which model answered, permanent
errors with their fix, and provider-neutral web search: real SDK clients, loopback servers."""

from __future__ import annotations

import http.client
import http.server
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hpo.agents.factory import build_chain
from hpo.llm import (
    PRESETS,
    AnthropicClient,
    LLMAuthError,
    LLMBadRequest,
    LLMClient,
    LLMModelNotFound,
    Message,
    OpenAIClient,
    make_client,
    resolve_base_url,
)
from hpo.testing import FakeLLMServer, FakeReply

KEY = "sk-endpoint-KEY-abcdef123456"


class Remedies(BaseModel):
    """Remedies for the diagnosis."""

    remedies: list[str]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeLLMServer, FakeLLMServer, FakeLLMServer]]:
    with FakeLLMServer(seed=1) as a, FakeLLMServer(seed=2) as b, FakeLLMServer(seed=3) as c:
        yield a, b, c


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    names = {p.api_key_env for p in PRESETS.values()}
    names |= {e for p in PRESETS.values() for e in p.base_url_envs}
    names |= {"HPO_LOCAL_MODEL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"}
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture(autouse=True)
def _fresh(servers: tuple[FakeLLMServer, ...]) -> None:
    for s in servers:
        s.reset()


def ask(c: LLMClient, **kw: Any) -> Any:
    return c.complete([Message("user", "list remedies")], Remedies, **kw)


def which(servers: tuple[FakeLLMServer, ...]) -> int:
    """Index of the one server that got the request."""
    (hit,) = [i for i, s in enumerate(servers) if s.requests]
    return hit


# ---------------------------------------------------------------------------- base_url


@pytest.mark.parametrize(
    ("preset", "hpo_var", "vendor_var"),
    [
        ("local", "HPO_LOCAL_BASE_URL", "OPENAI_BASE_URL"),
        ("openai", "HPO_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        ("claude", "HPO_CLAUDE_BASE_URL", "ANTHROPIC_BASE_URL"),
    ],
)
def test_base_url_precedence(
    clean_env: pytest.MonkeyPatch, servers: tuple[FakeLLMServer, ...], preset: str,
    hpo_var: str, vendor_var: str,
) -> None:
    p = PRESETS[preset]
    clean_env.setenv(p.api_key_env, KEY)

    def url(s: FakeLLMServer) -> str:
        return s.anthropic_base_url if p.kind == "anthropic" else s.openai_base_url

    a, b, c = servers
    # the vendor variable alone is honoured (OPENAI_BASE_URL for agent=local too)
    clean_env.setenv(vendor_var, url(c))
    assert resolve_base_url(p) == (url(c), vendor_var)
    ask(make_client(provider=preset, max_retries=0))
    assert which(servers) == 2
    # HPO_<PRESET>_BASE_URL beats the vendor variable
    c.reset()
    clean_env.setenv(hpo_var, url(b))
    ask(make_client(provider=preset, max_retries=0))
    assert which(servers) == 1
    # agent.base_url beats both
    b.reset()
    assert resolve_base_url(p, url(a)) == (url(a), "agent.base_url")
    ask(make_client(provider=preset, base_url=url(a), max_retries=0))
    assert which(servers) == 0
    # with nothing set, the preset's own endpoint
    for var in (hpo_var, vendor_var):
        clean_env.delenv(var)
    assert resolve_base_url(p) == (p.base_url, "default")


def test_local_default_endpoint(clean_env: pytest.MonkeyPatch) -> None:
    client = make_client(provider="local")
    assert isinstance(client, OpenAIClient)
    assert client.base_url.rstrip("/") == "http://127.0.0.1:8000/v1"


def test_a_role_can_have_its_own_base_url(
    clean_env: pytest.MonkeyPatch, servers: tuple[FakeLLMServer, ...]
) -> None:
    a, b, _ = servers
    clean_env.setenv("OPENAI_API_KEY", KEY)
    chain = build_chain({
        "provider": "openai", "chain": "single", "max_retries": 0, "dump_prompts": False,
        "base_url": a.openai_base_url,
        "roles": {"proposer": {"base_url": b.openai_base_url, "structured_output": "none"}},
    })
    assert chain is not None
    client = chain.roles["proposer"].client
    assert isinstance(client, OpenAIClient) and client.structured_output == "none"
    assert client.base_url.startswith(b.openai_base_url)


def test_bad_client_keys_are_one_line_config_errors(clean_env: pytest.MonkeyPatch) -> None:
    from hpo.errors import ConfigError

    clean_env.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(ConfigError, match=r"agent\.structured_output='grammar' is unknown"):
        build_chain({"provider": "openai", "structured_output": "grammar"})
    with pytest.raises(ConfigError, match=r"agent\.max_reply_bytes=10 is invalid"):
        build_chain({"provider": "openai", "max_reply_bytes": 10})
    with pytest.raises(ConfigError, match="not available with claude"):
        clean_env.setenv("ANTHROPIC_API_KEY", KEY)
        build_chain({"provider": "claude", "structured_output": "json_object"})


# ---------------------------------------------------------------------------- answered model


def test_the_model_that_answered_is_recorded_and_noted_once(
    servers: tuple[FakeLLMServer, ...], caplog: pytest.LogCaptureFixture
) -> None:
    server = servers[0]
    server.model = "smollm2-135m-instruct-q8_0.gguf"  # the server's own alias
    caplog.set_level(logging.INFO, logger="hpo.llm")
    client = OpenAIClient(model="local-model", api_key=KEY, base_url=server.openai_base_url,
                          provider="local", max_retries=0)
    for _ in range(3):
        done = ask(client)
        assert done.model == "smollm2-135m-instruct-q8_0.gguf"
        assert done.requested_model == "local-model"
    notes = [r for r in caplog.records if "the server answered as" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    server.model = None
    done = ask(client)
    assert done.model == done.requested_model == "local-model"


# ---------------------------------------------------------------------------- permanent errors


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_auth_errors_are_permanent_with_a_fix(
    clean_env: pytest.MonkeyPatch, servers: tuple[FakeLLMServer, ...], kind: str
) -> None:
    server = servers[0]
    preset = "claude" if kind == "anthropic" else "deepseek"
    env = PRESETS[preset].api_key_env
    clean_env.setenv(env, KEY)
    base = server.anthropic_base_url if kind == "anthropic" else server.openai_base_url
    server.script([FakeReply(status=401, error_message="invalid api key")])
    with pytest.raises(LLMAuthError) as info:
        ask(make_client(provider=preset, base_url=base, max_retries=2))
    err = info.value
    assert err.permanent and err.fix is not None and env in err.fix
    assert "agent.api_key_env" in err.fix and KEY not in str(err)
    assert len(server.requests) == 1


def test_an_unknown_model_names_the_served_ones(servers: tuple[FakeLLMServer, ...]) -> None:
    server = servers[0]
    server.served_models = ["qwen2.5-7b-instruct", "llama-3.1-8b"]
    client = OpenAIClient(model="gpt-4o-mini", api_key=KEY, base_url=server.openai_base_url,
                          provider="local", max_retries=2)
    for _ in range(2):
        with pytest.raises(LLMModelNotFound) as info:
            ask(client)
        err = info.value
        assert err.permanent and err.kind == "model_not_found"
        assert err.fix == ("set agent.model to a model this server serves: "
                           "qwen2.5-7b-instruct, llama-3.1-8b.")
    assert len(server.requests) == 2 and server.models_listed == 1  # asked once per client
    # the right model works
    ok = OpenAIClient(model="llama-3.1-8b", api_key=KEY, base_url=server.openai_base_url,
                      max_retries=0)
    assert ask(ok).model == "llama-3.1-8b"


def test_a_404_for_a_served_model_points_at_the_base_url(
    servers: tuple[FakeLLMServer, ...]
) -> None:
    server = servers[0]
    server.script([FakeReply(status=404, error_message="Not Found")])
    client = OpenAIClient(model="fake-model", api_key=KEY, base_url=server.openai_base_url,
                          max_retries=0)
    with pytest.raises(LLMBadRequest) as info:
        ask(client)
    assert info.value.permanent and info.value.fix is not None
    assert "agent.base_url" in info.value.fix


def test_anthropic_unknown_model(servers: tuple[FakeLLMServer, ...]) -> None:
    server = servers[0]
    server.served_models = ["claude-sonnet-4-6"]
    client = AnthropicClient(model="claude-nope", api_key=KEY, base_url=server.url,
                             max_retries=2)
    with pytest.raises(LLMModelNotFound) as info:
        ask(client)
    assert info.value.fix is not None and "agent.model" in info.value.fix
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ("max_tokens: 999999 > 8192, the maximum for this model", "agent.max_tokens"),
        ("This model's maximum context length is 8192 tokens", "agent.history"),
        ("temperature: must be at most 1", "agent.temperature"),
        ("something else entirely", "agent.model"),
    ],
)
def test_other_rejections_are_bad_requests_with_a_fix(
    servers: tuple[FakeLLMServer, ...], message: str, key: str
) -> None:
    server = servers[0]
    server.script([FakeReply(status=400, error_message=message)])
    client = OpenAIClient(model="m", api_key=KEY, base_url=server.openai_base_url,
                          max_retries=2)
    with pytest.raises(LLMBadRequest) as info:
        ask(client)
    assert info.value.permanent and info.value.fix is not None and key in info.value.fix
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------- web search


def test_openai_web_search_goes_through_the_responses_api(
    clean_env: pytest.MonkeyPatch, servers: tuple[FakeLLMServer, ...]
) -> None:
    server = servers[0]
    clean_env.setenv("OPENAI_API_KEY", KEY)
    client = make_client(provider="openai", base_url=server.openai_base_url, max_retries=0,
                         temperature=0.3)
    assert client.server_tools == frozenset({"web_search"})
    done = ask(client, tools=["web_search"], system="Find remedies.")
    (req,) = server.requests
    assert req.path.endswith("/v1/responses") and req.api == "responses"
    assert req.body["tools"] == [{"type": "web_search"}]
    fmt = req.body["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["schema"] == Remedies.model_json_schema()
    assert req.body["instructions"] == "Find remedies."
    assert req.body["max_output_tokens"] == 2048 and req.body["temperature"] == 0.3
    assert done.request == req.body and done.extra["web_searches"] == 1
    assert isinstance(done.reply, Remedies) and done.reply.remedies
    assert done.usage.input_tokens > 0
    # without tools the same client stays on Chat Completions
    ask(client)
    assert server.requests[-1].api == "chat"


def test_anthropic_web_search(servers: tuple[FakeLLMServer, ...]) -> None:
    server = servers[0]
    client = AnthropicClient(model="claude-sonnet-4-6", api_key=KEY, base_url=server.url,
                             max_retries=0)
    assert client.server_tools == frozenset({"web_search"})
    done = ask(client, tools=["web_search"])
    body = server.requests[0].body
    assert body["tools"][0]["type"] == "web_search_20250305"
    assert body["tools"][1]["name"] == "Remedies" and body["tool_choice"] == {"type": "auto"}
    assert done.reply.remedies


@pytest.mark.parametrize("preset", ["deepseek", "local", "openrouter"])
def test_providers_without_web_search_say_so(
    clean_env: pytest.MonkeyPatch, preset: str
) -> None:
    clean_env.setenv(PRESETS[preset].api_key_env, KEY)
    client = make_client(provider=preset, base_url="http://127.0.0.1:9/v1")
    assert client.server_tools == frozenset()
    with pytest.raises(ValueError, match="cannot use the server tool 'web_search'"):
        ask(client, tools=["web_search"])


# ---------------------------------------------------------------------------- proxies


class _ForwardingProxy(http.server.BaseHTTPRequestHandler):
    """A plain HTTP proxy on loopback that sends every request to one upstream server."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    seen: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        type(self).seen.append(self.path)  # an absolute URL: the client used the proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urllib.parse.urlsplit(self.path)
        host, port = urllib.parse.urlsplit(self.upstream).netloc.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request("POST", target.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()


def test_environment_proxies_are_honoured_except_for_loopback(
    clean_env: pytest.MonkeyPatch, servers: tuple[FakeLLMServer, ...]
) -> None:
    server = servers[0]
    _ForwardingProxy.upstream = server.url
    _ForwardingProxy.seen = []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardingProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        remote = OpenAIClient(model="m", api_key=KEY, base_url="http://llm.invalid/v1",
                              max_retries=0)
        assert ask(remote).reply.remedies
        assert _ForwardingProxy.seen == ["http://llm.invalid/v1/chat/completions"]
        local = OpenAIClient(model="m", api_key=KEY, base_url=server.openai_base_url,
                             max_retries=0)
        assert ask(local).reply.remedies
        assert len(_ForwardingProxy.seen) == 1 and len(server.requests) == 2
    finally:
        proxy.shutdown()
        proxy.server_close()
