"""Pydantic reply models of the agent roles: what an LLM reply must parse into.

The schemas stay simple on purpose: they are sent as an OpenAI ``json_schema`` response format
and as an Anthropic tool ``input_schema``. Nothing in a reply is ever executed; parameter values
are checked against the search space by the sampler before they become a trial.
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
    """One candidate configuration: a value for each search-space parameter, and why."""

    params: dict[str, ParamValue] = Field(
        description="One value per search-space parameter, keyed by the parameter name."
    )
    rationale: str = Field(default="", description="One or two sentences: why this candidate.")


class ProposerReply(_Reply):
    """The proposer's (and the repair role's) reply."""

    proposals: list[Proposal]
    diagnosis: str = Field(default="", description="What the history shows, in brief.")


class AnalystReply(_Reply):
    """The analyst's reading of the history; it proposes nothing."""

    diagnosis: str
    findings: list[str] = Field(default_factory=list)
    recommendations: list[str] = Field(default_factory=list)


class ConsultantReply(_Reply):
    """One consultant's advice for this turn plus its candidate configurations."""

    advice: str
    proposals: list[Proposal] = Field(default_factory=list)


class PlannerReply(_Reply):
    """The planner's step size (or stop) with the proposals that take that step."""

    step: Literal["small", "medium", "radical", "stop"]
    rationale: str = ""
    proposals: list[Proposal] = Field(default_factory=list)


class ResearchReply(_Reply):
    """Remedies the researcher found for the problems named in the diagnosis."""

    remedies: list[str] = Field(default_factory=list)
