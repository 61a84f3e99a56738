"""Optuna samplers of hpo: :class:`LLMSampler`, its hybrid leader and its accounting."""

from __future__ import annotations

from hpo.samplers._factory import sampler_from_agent_config
from hpo.samplers._leader import CmaLeader
from hpo.samplers._llm import LLMSampler
from hpo.samplers._summary import SourceSummary, llm_share_summary, source_summary
from hpo.secrets import redact, redact_obj

__all__ = [
    "CmaLeader",
    "LLMSampler",
    "SourceSummary",
    "llm_share_summary",
    "redact",
    "redact_obj",
    "sampler_from_agent_config",
    "source_summary",
]
