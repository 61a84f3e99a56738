"""The loopback fake LLM server: wire shapes, scripting, the random proposer, lifecycle."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from hpo.llm import AnthropicClient, LLMServerError, Message, OpenAIClient
from hpo.testing import (
    FakeLLMServer,
    FakeReply,
    RecordedRequest,
    fill_from_schema,
    sample_search_space,
)

KEY = "sk-fake-KEY-0123456789"
SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "layers": {"type": "int", "low": 1, "high": 8},
    "width": {"type": "int", "low": 16, "high": 256, "step": 16},
    "batch": {"type": "int", "low": 8, "high": 512, "log": True},
    "act": {"type": "categorical", "choices": ["relu", "gelu", None]},
}


def prompt(k: int, space: dict[str, Any] = SPACE) -> str:
    return (
        "History ...\n<search_space>" + json.dumps(space) + "</search_space>\n"
        f"<n_proposals>{k}</n_proposals>\nReply in JSON."
    )


class Proposal(BaseModel):
    params: dict[str, float | int | str | None]
    rationale: str


class ProposerReply(BaseModel):
    proposals: list[Proposal]
    diagnosis: str
    step: Literal["small", "medium", "large"]


class Finding(BaseModel):
    parameter: str
    direction: Literal["increase", "decrease", "keep"]
    confidence: float = Field(ge=0.0, le=1.0)


class AnalystReply(BaseModel):
    """What the history says."""

    summary: str = Field(min_length=20)
    findings: list[Finding] = Field(min_length=2, max_length=4)
    important: list[str]
    promising_region: dict[str, list[float]]
    n_good: int = Field(ge=3, le=10)
    converged: bool
    note: str | None = None


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=7) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeLLMServer) -> None:
    server.reset()


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def openai_client(server: FakeLLMServer, **kw: Any) -> OpenAIClient:
    kw.setdefault("max_retries", 0)
    return OpenAIClient(model="gpt-4o-mini", api_key=KEY, base_url=server.openai_base_url, **kw)


def anthropic_client(server: FakeLLMServer, **kw: Any) -> AnthropicClient:
    kw.setdefault("max_retries", 0)
    return AnthropicClient(
        model="claude-sonnet-4-6", api_key=KEY, base_url=server.anthropic_base_url, **kw
    )


# ---------------------------------------------------------------------------- wire shapes


def test_openai_wire_shape(server: FakeLLMServer) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": prompt(2)}]},
        ],
    }
    status, _, data = post(server.openai_base_url + "/chat/completions", body)
    assert status == 200
    assert data["object"] == "chat.completion" and data["model"] == "m"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    reply = json.loads(choice["message"]["content"])  # no schema: the canonical proposer reply
    assert set(reply) == {"proposals", "diagnosis", "step"} and reply["step"] == "small"
    assert len(reply["proposals"]) == 2 and set(reply["proposals"][0]["params"]) == set(SPACE)
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    (req,) = server.requests
    assert req.kind == "openai" and req.system == "sys" and req.schema is None


def test_anthropic_wire_shape(server: FakeLLMServer) -> None:
    tool = {"name": "reply", "input_schema": ProposerReply.model_json_schema()}
    body = {
        "model": "c",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": prompt(3)}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "reply"},
    }
    status, _, data = post(server.url + "/v1/messages", body, {"x-api-key": KEY})
    assert status == 200
    assert data["type"] == "message" and data["stop_reason"] == "tool_use"
    (block,) = data["content"]
    assert block["type"] == "tool_use" and block["name"] == "reply"
    assert len(ProposerReply.model_validate(block["input"]).proposals) == 3
    assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0
    # without tools the same reply comes back as text
    body.pop("tools")
    body.pop("tool_choice")
    _, _, data = post(server.url + "/v1/messages", body)
    assert data["content"][0]["type"] == "text" and data["stop_reason"] == "end_turn"
    assert server.requests[0].system == "be brief"
    assert server.requests[0].api_key == KEY


def test_error_shapes_and_unknown_routes(server: FakeLLMServer) -> None:
    server.script([FakeReply.rate_limited(2.0), FakeReply.server_error(503)])
    status, headers, data = post(server.openai_base_url + "/chat/completions", {})
    assert status == 429 and data["error"]["type"] == "rate_limit_exceeded"
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "2000"
    status, _, data = post(server.url + "/v1/messages", {})
    assert status == 503 and data["type"] == "error" and data["error"]["type"] == "api_error"
    status, _, _ = post(server.url + "/v1/nowhere", {})
    assert status == 404
    with urllib.request.urlopen(server.openai_base_url + "/models", timeout=5) as resp:
        assert json.loads(resp.read())["data"][0]["id"]


# ---------------------------------------------------------------------------- proposer


def test_sample_search_space_respects_the_spec() -> None:
    rng = random.Random(0)
    draws = [sample_search_space(SPACE, rng) for _ in range(300)]
    for d in draws:
        assert 1e-5 <= d["lr"] <= 1e-1
        assert d["dropout"] in {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
        assert isinstance(d["layers"], int) and 1 <= d["layers"] <= 8
        assert d["width"] % 16 == 0 and 16 <= d["width"] <= 256
        assert 8 <= d["batch"] <= 512
        assert d["act"] in ("relu", "gelu", None)
    assert len({d["act"] for d in draws}) == 3
    assert min(d["lr"] for d in draws) < 1e-3 < max(d["lr"] for d in draws)  # log-uniform
    assert sample_search_space({"bad": {"type": "float"}}, rng) == {}


def test_random_proposer_is_seeded(server: FakeLLMServer) -> None:
    def proposals(seed: int) -> list[dict[str, Any]]:
        with FakeLLMServer(seed=seed) as srv:
            done = openai_client(srv).complete([Message("user", prompt(4))], ProposerReply)
        return [p.params for p in done.reply.proposals]

    first = proposals(11)
    assert first == proposals(11)
    assert first != proposals(12)
    assert len(first) == 4 and len({json.dumps(p, sort_keys=True) for p in first}) == 4


@pytest.mark.parametrize("client", [openai_client, anthropic_client])
def test_schema_filler_satisfies_other_reply_models(client, server: FakeLLMServer) -> None:
    done = client(server).complete([Message("user", "analyse")], AnalystReply)
    reply = done.reply
    assert 2 <= len(reply.findings) <= 4
    assert 3 <= reply.n_good <= 10
    assert reply.findings[0].direction == "increase"


def test_fill_from_schema_directly() -> None:
    value = fill_from_schema(ProposerReply.model_json_schema(), search_space=SPACE, n_proposals=5)
    reply = ProposerReply.model_validate(value)
    assert len(reply.proposals) == 5 and set(reply.proposals[0].params) == set(SPACE)
    assert reply.step == "small"
    AnalystReply.model_validate(fill_from_schema(AnalystReply.model_json_schema()))


# ---------------------------------------------------------------------------- scripting


def test_script_queue_then_responder(server: FakeLLMServer) -> None:
    seen: list[RecordedRequest] = []

    def spy(req: RecordedRequest) -> None:
        seen.append(req)
        return None  # fall back to the random proposer

    server.script(['{"proposals": [], "diagnosis": "d", "step": "large"}', spy])
    assert server.pending == 2
    client = openai_client(server)
    first = client.complete([Message("user", prompt(1))], ProposerReply).reply
    assert first.step == "large" and first.proposals == []
    second = client.complete([Message("user", prompt(2))], ProposerReply).reply
    assert len(second.proposals) == 2 and len(seen) == 1
    server.responder = lambda req: {"proposals": [], "diagnosis": req.model, "step": "medium"}
    assert client.complete([Message("user", "x")], ProposerReply).reply.diagnosis == "gpt-4o-mini"
    assert server.pending == 0
    assert server.calls_by_kind() == {"openai": 3, "anthropic": 0}
    server.reset()
    assert server.requests == [] and server.calls_by_kind() == {"openai": 0, "anthropic": 0}
    assert len(client.complete([Message("user", prompt(2))], ProposerReply).reply.proposals) == 2


def test_redacted_hides_keys(server: FakeLLMServer) -> None:
    openai_client(server).complete([Message("user", prompt(1))], ProposerReply)
    anthropic_client(server).complete([Message("user", prompt(1))], ProposerReply)
    for req in server.requests:
        assert req.api_key == KEY
        red = req.redacted()
        assert KEY not in json.dumps(red.headers)
        assert red.api_key == "***" and red.body == req.body
    assert server.calls_by_kind() == {"openai": 1, "anthropic": 1}


def test_broken_responder_becomes_a_500(server: FakeLLMServer) -> None:
    def broken(req: RecordedRequest) -> str:
        raise RuntimeError("boom")

    server.responder = broken
    with pytest.raises(LLMServerError, match="boom"):
        openai_client(server).complete([Message("user", "x")], ProposerReply)


def test_concurrent_requests(server: FakeLLMServer) -> None:
    client = openai_client(server)
    results: list[int] = []
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            done = client.complete([Message("user", prompt(k))], ProposerReply)
            results.append(len(done.reply.proposals))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sorted(results) == list(range(1, 9))
    assert len(server.requests) == 8


# ---------------------------------------------------------------------------- lifecycle


def test_stop_is_prompt_and_releases_the_port() -> None:
    srv = FakeLLMServer().start()
    port = int(srv.url.rsplit(":", 1)[1])
    srv.script([FakeReply(delay_s=30)])
    client = openai_client(srv, timeout_s=10)
    caught: list[BaseException] = []
    t = threading.Thread(target=lambda: caught.extend(_call(client)), daemon=True)
    t.start()
    deadline = time.time() + 5
    while not srv.requests and time.time() < deadline:
        time.sleep(0.02)
    start = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - start < 3
    t.join(timeout=10)
    assert caught and not t.is_alive()  # the client saw the dropped connection, it did not hang
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.url
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    srv.stop()  # idempotent


def _call(client: OpenAIClient) -> list[BaseException]:
    try:
        client.complete([Message("user", "x")], ProposerReply)
    except Exception as exc:
        return [exc]
    return []


# ---------------------------------------------------------------------------- realism


def test_served_models_and_alias(server: FakeLLMServer) -> None:
    server.served_models = ["a-model", "b-model"]
    server.model = "alias.gguf"
    with urllib.request.urlopen(server.openai_base_url + "/models", timeout=5) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["a-model", "b-model"]
    assert server.models_listed == 1
    status, _, data = post(server.openai_base_url + "/chat/completions",
                           {"model": "c-model", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "`c-model` does not exist" in data["error"]["message"]
    status, _, data = post(server.openai_base_url + "/chat/completions",
                           {"model": "a-model", "messages": [{"role": "user", "content": "x"}]})
    assert status == 200 and data["model"] == "alias.gguf"
    server.reset()  # back to the constructor's settings
    assert server.served_models is None and server.model is None


def test_llama_cpp_python_flavor(server: FakeLLMServer) -> None:
    server.flavor = "llama_cpp_python"
    schema = ProposerReply.model_json_schema()
    chat = {"model": "m", "messages": [{"role": "user", "content": prompt(2)}]}
    status, _, data = post(server.openai_base_url + "/chat/completions", {
        **chat, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    assert status == 500 and "Input should be 'text' or 'json_object'" in data["error"]["message"]
    status, _, data = post(server.openai_base_url + "/chat/completions", {
        **chat, "response_format": {"type": "json_object", "schema": schema}})
    reply = ProposerReply.model_validate_json(data["choices"][0]["message"]["content"])
    assert status == 200 and len(reply.proposals) == 2
    assert [r.form for r in server.requests] == ["json_schema", "json_object"]


def test_openai_tool_call_and_responses_wire_shapes(server: FakeLLMServer) -> None:
    schema = ProposerReply.model_json_schema()
    _, _, data = post(server.openai_base_url + "/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": prompt(1)}],
        "tools": [{"type": "function", "function": {"name": "reply", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "reply"}}})
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "reply"
    ProposerReply.model_validate_json(call["function"]["arguments"])
    _, _, data = post(server.openai_base_url + "/responses", {
        "model": "gpt-x", "input": prompt(3), "instructions": "be brief",
        "tools": [{"type": "web_search"}],
        "text": {"format": {"type": "json_schema", "name": "r", "schema": schema}}})
    assert data["object"] == "response" and data["status"] == "completed"
    search, message = data["output"]
    assert search["type"] == "web_search_call" and message["type"] == "message"
    reply = ProposerReply.model_validate_json(message["content"][0]["text"])
    assert len(reply.proposals) == 3
    req = server.requests[-1]
    assert req.api == "responses" and req.system == "be brief" and req.server_tools == (
        "web_search",)


def test_trickled_reply_arrives_whole_for_a_patient_client(server: FakeLLMServer) -> None:
    server.script([FakeReply.trickle(400.0, {"answer": 42})])
    status, _, data = post(server.openai_base_url + "/chat/completions", {})
    assert status == 200 and json.loads(data["choices"][0]["message"]["content"]) == {
        "answer": 42}
    deadline = time.time() + 10
    while server.active and time.time() < deadline:  # the handler ends just after its write
        time.sleep(0.02)
    assert server.active == 0 and server.disconnects == 0


def test_a_client_leaving_a_stalled_reply_is_seen(server: FakeLLMServer) -> None:
    server.script([FakeReply.stalled(after_bytes=3)])
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.time() + 10
        while server.active != 1 and time.time() < deadline:
            time.sleep(0.02)
        assert server.active == 1
    deadline = time.time() + 10
    while server.disconnects != 1 and time.time() < deadline:
        time.sleep(0.02)
    assert server.disconnects == 1 and server.active == 0


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        FakeLLMServer(host="0.0.0.0")
