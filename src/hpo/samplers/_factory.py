"""Build the sampler of a sweep from a plain ``agent`` mapping (no Hydra in here).

CONTRACT (shared by the sweeper and hpo.samplers): the sweeper calls
:func:`sampler_from_agent_config` with what only it knows (search space, slots, budget, where to
dump); everything the ``agent`` mapping decides (chain, mode, shares, budgets, context) is read
here, so a new agent key needs no change in the sweeper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.samplers import BaseSampler

from hpo.space import ParamSpec

__all__ = ["sampler_from_agent_config"]


def sampler_from_agent_config(
    agent_cfg: Mapping[str, Any],
    *,
    search_space: Sequence[ParamSpec],
    fallback: BaseSampler,
    seed: int | None,
    batch_size: int,
    n_trials: int | None = None,
    dump_dir: str | Path | None = None,
    objective_names: Sequence[str] | None = None,
    sensitive: Mapping[str, str] | None = None,
    fidelity: str | None = None,
) -> BaseSampler:
    """The :class:`~hpo.samplers.LLMSampler` a sweep runs on.

    Args:
        agent_cfg: A plain mapping shaped like ``conf/agent/*.yaml``.
        search_space: The searched parameters, with defaults and descriptions.
        fallback: The classical sampler (startup, failures, shares).
        seed: Seed of the sampler and of the default fallback.
        batch_size: Proposals asked per LLM call: the sweep's parallel slots.
        n_trials: The study's trial budget (shown to the LLM; caps the proposals per call).
        dump_dir: Folder for the audit copy of every LLM call (written when
            ``agent_cfg["dump_prompts"]`` is true, the default).
        objective_names: One name per objective, for the prompts.
        sensitive: Names to anonymize in prompts (dataset, model, study, paths).
        fidelity: What one trial costs, e.g. "up to 20 epochs per trial".

    Raises:
        ConfigError: An invalid ``agent`` value (from :func:`hpo.agents.factory.build_chain`).
    """
    from hpo.agents.factory import build_chain
    from hpo.samplers._llm import LLMSampler

    agent = dict(agent_cfg)
    chain = build_chain(agent, sensitive=sensitive)
    budget = agent.get("budget") or {}
    context = agent.get("context")
    return LLMSampler(
        chain=chain,
        search_space=search_space,
        fallback=fallback,
        baseline=True,
        fallback_share=float(agent.get("fallback_share") or 0.0),
        batch_size=batch_size,
        seed=seed,
        max_tokens=budget.get("max_tokens"),
        max_usd=budget.get("max_usd"),
        dump_dir=dump_dir if agent.get("dump_prompts", True) else None,
        objective_names=objective_names,
        context={"task": str(context)} if context else None,
    )
