"""Optuna samplers of hpo: :class:`LLMSampler` and its helpers."""

from __future__ import annotations

from hpo.samplers._factory import sampler_from_agent_config
from hpo.samplers._llm import LLMSampler
from hpo.secrets import redact, redact_obj

__all__ = ["LLMSampler", "redact", "redact_obj", "sampler_from_agent_config"]
