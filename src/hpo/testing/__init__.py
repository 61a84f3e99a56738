"""Test helpers shipped with hpo (used by the test suite and the benchmarks).

``hpo.testing.fake_llm`` holds a loopback HTTP server that speaks the OpenAI and Anthropic wire
protocols, so the real SDK clients can be exercised without a network or an LLM.
"""

from __future__ import annotations

from hpo.testing.fake_llm import (
    FakeLLMServer,
    FakeReply,
    RecordedRequest,
    Responder,
    fill_from_schema,
    random_proposer,
    sample_search_space,
)

__all__ = [
    "FakeLLMServer",
    "FakeReply",
    "RecordedRequest",
    "Responder",
    "fill_from_schema",
    "random_proposer",
    "sample_search_space",
]
