"""Build the sampler of a sweep from a plain ``agent`` mapping (no Hydra in here).

CONTRACT (shared by the sweeper and hpo.samplers): the sweeper calls
:func:`sampler_from_agent_config` with what only it knows (search space, slots, budget, where to
dump); everything the ``agent`` mapping decides (chain, mode, shares, budgets, context) is read
here, from the ONE validated :class:`~hpo.agents.config.AgentConfig` (its keys are documented in
``conf/agent/auto.yaml``), so a new agent key needs no change in the sweeper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.samplers import BaseSampler

from hpo.errors import ConfigError
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
        agent_cfg: A plain mapping shaped like ``conf/agent/*.yaml`` (or an
            :class:`~hpo.agents.config.AgentConfig`).
        search_space: The searched parameters, with defaults and descriptions.
        fallback: The classical sampler (startup, failures, shares; in hybrid mode the
            leader's sampler of categorical parameters, or the TPE leader itself).
        seed: Seed of the sampler and of the default fallback.
        batch_size: At most this many proposals per LLM call: the sweep's parallel slots
            (``n_jobs``). Each call asks for ``n_proposals``: of the next
            ``min(batch_size, trials left)`` trials, those given to the LLM.
        n_trials: The study's trial budget (shown to the LLM; caps the proposals per call).
        dump_dir: Folder for the audit copy of every LLM call (written when
            ``agent.dump_prompts`` is true, the default).
        objective_names: One name per objective, for the prompts.
        sensitive: Names to anonymize in prompts (dataset, model, study, paths).
        fidelity: What one trial costs, e.g. "up to 20 epochs per trial" (the sampler adds
            the median duration of the finished trials).

    Raises:
        ConfigError: An invalid ``agent`` value or combination (one line naming the key).
    """
    from hpo.agents.config import AgentConfig
    from hpo.agents.factory import build_chain
    from hpo.samplers._llm import LLMSampler

    agent = AgentConfig.from_mapping(agent_cfg)
    chain = build_chain(agent, sensitive=sensitive)
    try:
        return LLMSampler(
            chain=chain,
            search_space=search_space,
            fallback=fallback,
            baseline=True,
            fallback_share=agent.fallback_share,
            batch_size=batch_size,
            seed=seed,
            max_tokens=agent.budget.max_tokens,
            max_usd=agent.budget.max_usd,
            dump_dir=dump_dir if agent.dump_prompts else None,
            objective_names=objective_names,
            context={"task": agent.context} if agent.context else None,
            mode=agent.mode,
            n_trials=n_trials,
            fidelity=fidelity,
            leader=agent.leader,
            llm_share=agent.llm_share,
            llm_floor=agent.llm_floor,
            adaptive_share=agent.adaptive_share,
            startup_trials=agent.startup_trials,
            stall_trials=agent.stall_trials,
            rank_candidates=agent.rank_candidates,
        )
    except ValueError as exc:  # a combination only the search space reveals
        raise ConfigError(f"agent: {exc}") from None
