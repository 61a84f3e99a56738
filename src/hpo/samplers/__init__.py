"""Optuna samplers of hpo: :class:`LLMSampler` and its helpers."""

from __future__ import annotations

from hpo.samplers._llm import LLMSampler
from hpo.secrets import redact, redact_obj

__all__ = ["LLMSampler", "redact", "redact_obj"]
