"""Optuna's own sampler conformance suites, run against LLMSampler.

Two variants: with the real agent chain (``build_chain``, OpenAI-compatible client) talking to a
module-scoped fake LLM server, whose default responder proposes random points of the prompt's
search space; and with no chain at all (every trial from the fallback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase

from hpo.agents import build_chain
from hpo.samplers import LLMSampler
from hpo.testing import FakeLLMServer

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(seed=0) as srv:
        yield srv


class TestLLMSamplerWithChain(BasicSamplerTestCase, RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(
        self, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> Callable[[], BaseSampler]:
        for name in ("ANTHROPIC_API_KEY", "HPO_OPENAI_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-conformance")
        monkeypatch.chdir(tmp_path)
        server.reset()

        def factory() -> BaseSampler:
            chain = build_chain(
                {"provider": "openai", "chain": "single", "dump_prompts": False, "max_retries": 0}
            )
            assert chain is not None
            return LLMSampler(chain=chain, seed=0)

        return factory

    def test_chain_was_used(
        self, sampler: Callable[[], BaseSampler], server: FakeLLMServer
    ) -> None:
        study = optuna.create_study(sampler=sampler())
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("y", 0, 3), 4)
        assert [t.user_attrs["hpo:source"] for t in study.trials][1:] == ["llm"] * 3
        assert len(server.requests) == 3


class TestLLMSamplerWithoutChain(BasicSamplerTestCase, RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: LLMSampler(seed=0)
