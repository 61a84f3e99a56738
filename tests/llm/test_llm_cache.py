"""The reply cache keys on everything that changes a reply (schema, structured-output setting,
server tools) and passes web search on: real clients against the loopback fake server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from hpo.agents.cache import CachingClient, cache_key
from hpo.llm import AnthropicClient, Message, OpenAIClient
from hpo.testing import FakeLLMServer

KEY = "sk-cache-KEY-0987654321"
MSGS = [Message("user", "list remedies")]


class Remedies(BaseModel):
    """Remedies."""

    remedies: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=4) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeLLMServer) -> None:
    server.reset()


def key(**over: object) -> str:
    base: dict[str, object] = {
        "provider": "openai", "model": "m", "system": "s", "messages": MSGS,
        "schema": Remedies.model_json_schema(), "temperature": 0.5,
        "structured_output": "auto", "tools": (),
    }
    base.update(over)
    return cache_key(**base)  # type: ignore[arg-type]


def test_the_key_covers_schema_form_and_tools() -> None:
    k = key()
    assert key() == k
    assert key(schema={"type": "object"}) != k
    assert key(structured_output="json_object") != k
    assert key(tools=["web_search"]) != k
    assert key(tools=["web_search", "web_search"]) == key(tools=["web_search"])


def test_web_search_reaches_the_server_through_the_cache(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    inner = AnthropicClient(model="claude-sonnet-4-6", api_key=KEY, base_url=server.url,
                            max_retries=0)
    client = CachingClient(inner, tmp_path)
    assert client.server_tools == inner.server_tools == frozenset({"web_search"})
    first = client.complete(MSGS, Remedies, tools=["web_search"])
    assert server.requests[0].server_tools == ("web_search",)
    again = client.complete(MSGS, Remedies, tools=["web_search"])
    assert again.cached and again.reply == first.reply and len(server.requests) == 1
    assert again.request == first.request and again.structured_output == "tool"
    # the same prompt without tools is another request
    client.complete(MSGS, Remedies)
    assert len(server.requests) == 2 and server.requests[1].server_tools == ()


def test_a_schema_or_setting_change_misses(server: FakeLLMServer, tmp_path: Path) -> None:
    def cached(**kw: object) -> CachingClient:
        return CachingClient(OpenAIClient(model="m", api_key=KEY, base_url=server.openai_base_url,
                                          max_retries=0, **kw), tmp_path)  # type: ignore[arg-type]

    cached().complete(MSGS, Remedies)
    cached().complete(MSGS, Remedies)
    assert len(server.requests) == 1
    schema = {**Remedies.model_json_schema(), "description": "at most three"}
    cached().complete(MSGS, Remedies, schema=schema)
    cached(structured_output="none").complete(MSGS, Remedies)
    assert len(server.requests) == 3
    assert server.requests[1].body["response_format"]["json_schema"]["schema"] == schema
    assert server.requests[2].form == "none"
    assert not any(KEY in p.read_text() for p in tmp_path.rglob("*.json"))
