"""agent.timeout_s bounds a whole call and agent.max_reply_bytes every reply: real SDK clients
against trickling, stalled, rate-limiting and oversized loopback servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from hpo.llm import (
    AnthropicClient,
    LLMClient,
    LLMConnectionError,
    LLMRateLimited,
    LLMTimeout,
    LLMTooLarge,
    Message,
    OpenAIClient,
)
from hpo.testing import FakeLLMServer, FakeReply

KEY = "sk-deadline-KEY-1234567890"
KINDS = ["openai", "anthropic"]


class Answer(BaseModel):
    answer: int


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=1) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: FakeLLMServer) -> None:
    settle(lambda: server.active == 0)  # a reply the last test gave up on has ended
    server.reset()


def client(kind: str, base: str, **kw: Any) -> LLMClient:
    kw.setdefault("max_retries", 2)
    if kind == "anthropic":
        return AnthropicClient(model="claude-sonnet-4-6", api_key=KEY, base_url=base, **kw)
    return OpenAIClient(model="gpt-4o-mini", api_key=KEY, base_url=f"{base}/v1", **kw)


def ask(c: LLMClient) -> Any:
    return c.complete([Message("user", "answer")], Answer)


def settle(cond: Callable[[], bool], limit_s: float = 30.0) -> bool:
    """Poll ``cond`` (a safety limit only: no timing is asserted)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def non_daemon_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t.is_alive()}


# ---------------------------------------------------------------------------- the deadline


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(FakeReply.trickle(1.0, {"answer": 42}), id="one-byte-a-second"),
        pytest.param(FakeReply.stalled(after_bytes=5), id="stalled-mid-body"),
        pytest.param(FakeReply.stalled(after_bytes=0), id="stalled-after-headers"),
        pytest.param(FakeReply(delay_s=120, text="{}"), id="stalled-before-headers"),
    ],
)
def test_a_slow_server_is_cut_at_the_deadline(
    kind: str, reply: FakeReply, server: FakeLLMServer
) -> None:
    threads_before = non_daemon_threads()
    server.script([reply])
    c = client(kind, server.url, timeout_s=2)
    with pytest.raises(LLMTimeout) as info:
        ask(c)
    err = info.value
    assert "2 s deadline" in str(err) and "agent.timeout_s=2" in str(err)
    assert err.fix is not None and "agent.timeout_s" in err.fix
    assert err.request is not None and err.request["messages"][-1]["content"] == "answer"
    # one request: no retry was started past the deadline (max_retries=2 was left)
    assert len(server.requests) == 1
    # the client closed the connection: the server stopped serving and saw it go
    assert settle(lambda: server.active == 0 and server.disconnects == 1)
    assert non_daemon_threads() <= threads_before


@pytest.mark.parametrize("kind", KINDS)
def test_retry_waits_fit_inside_the_deadline(kind: str, server: FakeLLMServer) -> None:
    # a short retry-after fits: the SDK's own retry answers
    server.script([FakeReply.rate_limited(0.05), {"answer": 7}])
    assert ask(client(kind, server.url, timeout_s=10)).reply.answer == 7
    assert len(server.requests) == 2
    # a retry-after past the deadline is not slept: the 429 is the answer
    server.reset()
    server.script([FakeReply.rate_limited(30.0), {"answer": 8}])
    with pytest.raises(LLMRateLimited):
        ask(client(kind, server.url, timeout_s=2, max_retries=3))
    assert len(server.requests) == 1 and server.pending == 1


@pytest.mark.parametrize("kind", KINDS)
def test_connection_failures_are_not_retried_past_the_deadline(kind: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = client(kind, f"http://127.0.0.1:{port}", timeout_s=1, max_retries=8)
    with pytest.raises(LLMConnectionError) as info:
        ask(c)
    assert "no time is left for a retry" in str(info.value)
    assert info.value.fix is not None and "agent.base_url" in info.value.fix


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_calls_each_get_their_own_deadline(kind: str, server: FakeLLMServer) -> None:
    c = client(kind, server.url, timeout_s=2, max_retries=0)
    server.responder = lambda req: (FakeReply.stalled() if "slow" in req.last_user_text
                                    else {"answer": 1})
    results: dict[str, Any] = {}

    def call(text: str) -> None:
        try:
            results[text] = c.complete([Message("user", text)], Answer).reply.answer
        except Exception as exc:
            results[text] = exc

    threads = [threading.Thread(target=call, args=(t,)) for t in ("slow", "fast")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results["fast"] == 1
    assert isinstance(results["slow"], LLMTimeout)


# ---------------------------------------------------------------------------- the size cap


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_reply_is_cut_at_the_cap(
    kind: str, chunked: bool, server: FakeLLMServer
) -> None:
    server.script([FakeReply.oversized(20_000_000, chunked=chunked)])
    with pytest.raises(LLMTooLarge) as info:
        ask(client(kind, server.url, timeout_s=30))
    err = info.value
    assert err.kind == "too_large" and not err.permanent
    assert "agent.max_reply_bytes=262144" in str(err)
    assert err.fix is not None and "agent.max_reply_bytes" in err.fix
    assert len(server.requests) == 1  # not retried
    # the client closed the connection (at the cap, or at once for a Content-Length over it)
    assert settle(lambda: server.active == 0 and server.disconnects == 1)


def test_the_cap_is_configurable_and_a_reply_under_it_passes(server: FakeLLMServer) -> None:
    filler = "z" * 3000
    server.script([{"answer": 3, "pad": filler}, {"answer": 4, "pad": filler}])
    assert ask(client("openai", server.url, max_reply_bytes=65536)).reply.answer == 3
    with pytest.raises(LLMTooLarge, match=r"agent\.max_reply_bytes=2048"):
        ask(client("openai", server.url, max_reply_bytes=2048))
    with pytest.raises(ValueError, match="max_reply_bytes"):
        client("openai", server.url, max_reply_bytes=10)
