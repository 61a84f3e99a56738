"""Shared by the sampler tests: a module-scoped fake LLM server, an environment whose only
credentials point at it, the real chain built by ``build_chain``, and a chain wrapper that keeps
the views it was asked about. A test module imports the fixtures (``server``, ``llm_env``) under
their ``*_fixture`` names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo.agents import build_chain
from hpo.testing import FakeLLMServer

__all__ = ["CANARY", "RecordingChain", "llm_env_fixture", "make_chain", "server_fixture"]

CANARY = "sk-canary-XYZ"


@pytest.fixture(scope="module", name="server")
def server_fixture() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=0) as srv:
        yield srv


@pytest.fixture(name="llm_env")
def llm_env_fixture(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> FakeLLMServer:
    """Only OPENAI_* credentials, pointing at the fake server; a clean cwd (no .env)."""
    for name in (
        "ANTHROPIC_API_KEY",
        "DEEPSEEK_API_KEY",
        "GEMINI_API_KEY",
        "OPENROUTER_API_KEY",
        "HPO_OPENAI_BASE_URL",
        "HPO_CLAUDE_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.chdir(tmp_path)
    server.reset()
    return server


def make_chain(**overrides: Any) -> Any:
    """The real single-proposer chain on the OpenAI-compatible client."""
    cfg: dict[str, Any] = {
        "provider": "openai",
        "chain": "single",
        "dump_prompts": False,
        "max_retries": 0,
        "timeout_s": 10,
    }
    cfg.update(overrides)
    return build_chain(cfg)


class RecordingChain:
    """The real chain, with the views it was asked about kept for the test to read."""

    name = "recording"

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.views: list[Any] = []

    def propose(self, view: Any) -> Any:
        self.views.append(view)
        return self.chain.propose(view)

    def repair(self, view: Any, previous: Any, errors: list[str]) -> Any:
        return self.chain.repair(view, previous, errors)
