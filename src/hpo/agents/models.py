"""Pydantic reply models of the agent roles: what an LLM reply must parse into.

The schemas stay simple on purpose: they are sent as an OpenAI ``json_schema`` response format,
a llama.cpp grammar and an Anthropic tool ``input_schema``. Field order is the order a model
writes its reply in: reasoning (diagnosis, rationale) before the numbers. For the proposing
roles :func:`hpo.agents.schema.reply_schema` narrows the schema per call to the search space.
Nothing in a reply is ever executed; parameter values are checked against the search space by
the sampler before they become a trial.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ParamValue = float | int | str | bool | None

__all__ = [
    "AnalystReply",
    "ConsultantReply",
    "ParamValue",
    "PlannerReply",
    "Proposal",
    "ProposerReply",
    "ResearchReply",
]


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Proposal(_Reply):
    """One candidate configuration: why, then a value for each active search-space parameter."""

    rationale: str = Field(default="", description="One or two sentences: why this candidate.")
    params: dict[str, ParamValue] = Field(
        description="One value per active search-space parameter, keyed by the parameter name."
    )


class ProposerReply(_Reply):
    """The proposer's (and the repair role's) reply: the diagnosis first, then the proposals."""

    diagnosis: str = Field(default="", description="What the history shows, in brief.")
    proposals: list[Proposal]


class AnalystReply(_Reply):
    """The analyst's reading of the history; it proposes nothing."""

    diagnosis: str
    findings: list[str] = Field(default_factory=list)
    recommendations: list[str] = Field(default_factory=list)


class ConsultantReply(_Reply):
    """One consultant's advice for this turn, then its candidate configurations."""

    advice: str = Field(description="A few sentences: what to do next and why.")
    proposals: list[Proposal] = Field(default_factory=list)


class PlannerReply(_Reply):
    """The planner's reasoning, its step size (or stop), and the proposals that take that step."""

    rationale: str = Field(default="", description="Why this step, given the history and budget.")
    step: Literal["small", "medium", "radical", "stop"]
    proposals: list[Proposal] = Field(default_factory=list)


class ResearchReply(_Reply):
    """Remedies the researcher found for the problems named in the diagnosis."""

    remedies: list[str] = Field(default_factory=list)
