"""The agent chain: LLM roles that read a study's history and propose configurations.

Knows the LLM protocol (:mod:`hpo.llm.base`), the search space (:mod:`hpo.space`) and Optuna's
FrozenTrial (read-only); never Hydra. The sampler calls :func:`build_chain` once and then
:meth:`AgentChain.propose` / :meth:`AgentChain.repair` per batch.
"""

from __future__ import annotations

from hpo.agents.cache import CachingClient
from hpo.agents.chain import (
    AgentChain,
    CallRecord,
    ChainError,
    ChainResult,
    RoleSettings,
    StagedChain,
    StudyView,
    TrialBudget,
)
from hpo.agents.config import AgentConfig, BudgetConfig, RoleConfig
from hpo.agents.factory import NO_CREDENTIALS_WARNING, build_chain
from hpo.agents.features import (
    CurveFeatures,
    conclusive_verdict,
    curve_features,
    fold_summary,
    per_class_summary,
    trial_features,
)
from hpo.agents.history import Anonymizer, HistoryOptions, estimate_tokens, render_history
from hpo.agents.models import (
    AnalystReply,
    ConsultantReply,
    PlannerReply,
    Proposal,
    ProposerReply,
    ResearchReply,
)
from hpo.agents.prompts import ROLES, PromptSet
from hpo.agents.schema import reply_schema
from hpo.agents.stages import PRESETS, STAGES, chain_stages

__all__ = [
    "NO_CREDENTIALS_WARNING",
    "PRESETS",
    "ROLES",
    "STAGES",
    "AgentChain",
    "AgentConfig",
    "AnalystReply",
    "Anonymizer",
    "BudgetConfig",
    "CachingClient",
    "CallRecord",
    "ChainError",
    "ChainResult",
    "ConsultantReply",
    "CurveFeatures",
    "HistoryOptions",
    "PlannerReply",
    "PromptSet",
    "Proposal",
    "ProposerReply",
    "ResearchReply",
    "RoleConfig",
    "RoleSettings",
    "StagedChain",
    "StudyView",
    "TrialBudget",
    "build_chain",
    "chain_stages",
    "conclusive_verdict",
    "curve_features",
    "estimate_tokens",
    "fold_summary",
    "per_class_summary",
    "render_history",
    "reply_schema",
    "trial_features",
]
