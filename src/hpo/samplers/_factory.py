"""Build the sampler of a sweep from a plain ``agent`` mapping (no Hydra in here).

CONTRACT (shared by the sweeper and hpo.samplers): the sweeper calls
:func:`sampler_from_agent_config` with what only it knows (search space, slots, budget, where to
dump); everything the ``agent`` mapping decides (chain, mode, shares, budgets, context) is read
here, so a new agent key needs no change in the sweeper.

The sampler's keys of the ``agent`` mapping (validated here, before the chain is built)::

    mode: propose          # propose | hybrid
    leader: auto           # hybrid: auto | cmaes | tpe | gp
    llm_share: 0.25        # hybrid: share of trials asked of the LLM
    llm_floor: 0.05        # the lowest share the bandit may cut the LLM to
    adaptive_share: true   # the bandit adapts the LLM's share to how its trials do
    startup_trials: null   # classical trials first (baseline included); null: mode default
    stall_trials: 10       # hybrid: trials without improvement that hand the LLM a turn
    rank_candidates: 0     # hybrid + CMA-ES: the LLM ranks k of the leader's draws
    fallback_share: 0.0    # propose: share of trials left to the classical sampler
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
        agent_cfg: A plain mapping shaped like ``conf/agent/*.yaml``.
        search_space: The searched parameters, with defaults and descriptions.
        fallback: The classical sampler (startup, failures, shares; in hybrid mode the
            leader's sampler of categorical parameters, or the TPE leader itself).
        seed: Seed of the sampler and of the default fallback.
        batch_size: At most this many proposals per LLM call: the sweep's parallel slots
            (``n_jobs``). Each call asks for ``n_proposals``: of the next
            ``min(batch_size, trials left)`` trials, those given to the LLM.
        n_trials: The study's trial budget (shown to the LLM; caps the proposals per call).
        dump_dir: Folder for the audit copy of every LLM call (written when
            ``agent_cfg["dump_prompts"]`` is true, the default).
        objective_names: One name per objective, for the prompts.
        sensitive: Names to anonymize in prompts (dataset, model, study, paths).
        fidelity: What one trial costs, e.g. "up to 20 epochs per trial" (the sampler adds
            the median duration of the finished trials).

    Raises:
        ConfigError: An invalid ``agent`` value (the sampler's keys, or
            :func:`hpo.agents.factory.build_chain`'s).
    """
    from hpo.agents.factory import build_chain
    from hpo.samplers._leader import LEADERS
    from hpo.samplers._llm import MODES, LLMSampler

    agent = dict(agent_cfg)
    mode = str(agent.get("mode") or "propose").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"agent.mode={mode!r} is unknown: use one of {', '.join(MODES)}")
    leader = str(agent.get("leader") or "auto").strip().lower()
    if leader not in LEADERS:
        raise ConfigError(f"agent.leader={leader!r} is unknown: use one of {', '.join(LEADERS)}")
    llm_share = _number(agent, "llm_share", 0.25, high=1.0)
    llm_floor = _number(agent, "llm_floor", 0.05, high=1.0)
    fallback_share = _number(agent, "fallback_share", 0.0, high=1.0)
    startup = agent.get("startup_trials")
    startup_trials = None if startup is None else int(_number(agent, "startup_trials", 0,
                                                              integer=True))
    stall_trials = int(_number(agent, "stall_trials", 10, integer=True))
    rank_candidates = int(_number(agent, "rank_candidates", 0, integer=True))
    adaptive = agent.get("adaptive_share", True)
    if not isinstance(adaptive, bool):
        raise ConfigError(f"agent.adaptive_share={adaptive!r} is invalid: use true or false")
    if mode == "hybrid" and fallback_share:
        raise ConfigError(
            f"agent.fallback_share={fallback_share} applies to agent.mode=propose: with "
            "agent.mode=hybrid set agent.llm_share (the LLM's share) instead"
        )
    if rank_candidates and (mode != "hybrid" or leader not in ("auto", "cmaes")):
        raise ConfigError(
            f"agent.rank_candidates={rank_candidates} needs agent.mode=hybrid with the CMA-ES "
            "leader (agent.leader=cmaes): set those, or agent.rank_candidates=0"
        )

    chain = build_chain(agent, sensitive=sensitive)
    budget = agent.get("budget") or {}
    context = agent.get("context")
    try:
        return LLMSampler(
            chain=chain,
            search_space=search_space,
            fallback=fallback,
            baseline=True,
            fallback_share=fallback_share,
            batch_size=batch_size,
            seed=seed,
            max_tokens=budget.get("max_tokens"),
            max_usd=budget.get("max_usd"),
            dump_dir=dump_dir if agent.get("dump_prompts", True) else None,
            objective_names=objective_names,
            context={"task": str(context)} if context else None,
            mode=mode,  # type: ignore[arg-type]
            n_trials=n_trials,
            fidelity=fidelity,
            leader=leader,
            llm_share=llm_share,
            llm_floor=llm_floor,
            adaptive_share=adaptive,
            startup_trials=startup_trials,
            stall_trials=stall_trials,
            rank_candidates=rank_candidates,
        )
    except ValueError as exc:  # a combination only the search space reveals
        raise ConfigError(f"agent: {exc}") from None


def _number(
    agent: Mapping[str, Any],
    key: str,
    default: float,
    *,
    high: float | None = None,
    integer: bool = False,
) -> float:
    value = agent.get(key)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    if ok and integer:
        ok = float(value) == int(value)
    if ok and high is not None:
        ok = value <= high
    if not ok:
        what = "an integer >= 0" if integer else f"a number in [0, {high}]"
        raise ConfigError(f"agent.{key}={value!r} is invalid: use {what}")
    return float(value)
