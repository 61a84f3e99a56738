"""Build an agent chain from the agent config (:class:`~hpo.agents.config.AgentConfig`).

No Hydra here: the sweeper converts its config to a dict first. The keys, their defaults and
what they do are documented once, in ``conf/agent/auto.yaml``; :class:`AgentConfig` validates
them (one line naming the bad key). The chain reads its own keys (provider .. roles); the
sampler's keys (mode .. budget, dump_prompts, context) are read by
:func:`hpo.samplers.sampler_from_agent_config`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo.agents.cache import CachingClient
from hpo.agents.chain import AgentChain, RoleSettings, StagedChain
from hpo.agents.config import ROLE_NAMES, AgentConfig, BudgetConfig, RoleConfig
from hpo.agents.history import Anonymizer
from hpo.agents.prompts import PromptSet
from hpo.errors import ConfigError
from hpo.llm.base import LLMClient

__all__ = ["NO_CREDENTIALS_WARNING", "ROLE_NAMES", "build_chain"]

logger = logging.getLogger(__name__)

# Values per numeric parameter when the reply schema lists a grid (agent.schema_numbers).
SCHEMA_GRID_POINTS = 12

NO_CREDENTIALS_WARNING = (
    "No LLM credentials found (ANTHROPIC_API_KEY, OPENAI_API_KEY, DEEPSEEK_API_KEY, "
    "GEMINI_API_KEY, OPENROUTER_API_KEY): proposals come from the classical fallback sampler "
    "(TPE), NOT from an LLM. Set one of them (or put it in .env) to enable the LLM agent chain; "
    "agent=none silences this."
)

# Settings that need a client of their own when a role overrides them.
_CLIENT_KEYS = (
    "model",
    "api_key_env",
    "base_url",
    "timeout_s",
    "max_retries",
    "price_in_per_mtok",
    "price_out_per_mtok",
    "structured_output",
    "max_reply_bytes",
)

_warned_lock = threading.Lock()
_warned_no_credentials = False


def _warn_no_credentials_once() -> None:
    global _warned_no_credentials
    with _warned_lock:
        if _warned_no_credentials:
            return
        _warned_no_credentials = True
    logger.warning(NO_CREDENTIALS_WARNING)


def _path(value: Any) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else Path.cwd() / p


def _client_kwargs(agent: AgentConfig, over: RoleConfig | None = None) -> dict[str, Any]:
    """``make_client``'s settings: the agent's, with a role's overrides on top."""
    kw: dict[str, Any] = {k: getattr(agent, k) for k in (*_CLIENT_KEYS, "max_tokens")}
    if over is not None:
        kw.update(over.model_dump(include={*_CLIENT_KEYS, "max_tokens"}, exclude_none=True))
    return kw


def build_chain(
    agent_cfg: Mapping[str, Any] | AgentConfig,
    *,
    sensitive: Mapping[str, str] | None = None,
) -> AgentChain | None:
    """The agent chain described by ``agent_cfg``, or None when no LLM is to be used.

    Args:
        agent_cfg: The agent config, or a plain mapping shaped like ``conf/agent/auto.yaml``
            (validated here, see :meth:`AgentConfig.from_mapping`). The chain reads its own
            keys; the sampler's (``mode`` .. ``budget``) are validated and left to
            :func:`hpo.samplers.sampler_from_agent_config`: a chain has no budget of its own.
        sensitive: Caller-known sensitive strings -> neutral tokens (dataset, model and study
            names, project paths), e.g. from :meth:`Anonymizer.from_names`'s mapping.

    Returns:
        The chain; None for ``provider: none``, and for ``provider: auto`` when no credentials
        are found (then one WARNING is logged per process).

    Raises:
        ConfigError: An invalid value, an unknown key, or an explicit provider whose key is unset.
    """
    # validated before deciding there is no LLM, so a typo never passes silently
    agent = AgentConfig.from_mapping(agent_cfg)
    if agent.no_llm:
        return None
    if not isinstance(agent_cfg, AgentConfig) and agent.budget != BudgetConfig():
        # a Python caller's mapping: the chain has no budget, the sampler enforces it
        logger.warning("agent.budget is enforced by the sampler, not the chain: pass "
                       "max_tokens / max_usd to LLMSampler, or build it with "
                       "hpo.samplers.sampler_from_agent_config")

    from hpo.llm.providers import load_dotenv_once, make_client, resolve_auto

    load_dotenv_once()
    provider = agent.provider
    if provider == "auto":
        found = resolve_auto()
        if found is None:
            _warn_no_credentials_once()
            return None
        provider = found

    cache_dir = _path(agent.cache_dir)

    def client_for(over: RoleConfig | None = None) -> LLMClient:
        role_provider = over.provider if over is not None and over.provider else provider
        client = make_client(
            provider=provider if role_provider == "auto" else role_provider,
            temperature=agent.temperature if over is None or over.temperature is None
            else over.temperature,
            **_client_kwargs(agent, over),
        )
        return CachingClient(client, cache_dir) if agent.cache else client

    client = client_for()
    roles: dict[str, RoleSettings] = {}
    for role, over in agent.roles.items():
        own_client = any(getattr(over, k) is not None for k in ("provider", *_CLIENT_KEYS))
        roles[role] = RoleSettings(
            client=client_for(over) if own_client else client,
            temperature=agent.temperature if over.temperature is None else over.temperature,
            max_tokens=agent.max_tokens if over.max_tokens is None else over.max_tokens,
        )

    sens = dict(sensitive or {})
    for i, term in enumerate(agent.sensitive, start=1):
        sens.setdefault(term, f"term_{i}")
    try:
        prompts = PromptSet(directory=_path(agent.prompts_dir) if agent.prompts_dir else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    chain_name, stages = agent.stages
    # the sampler writes the one audit dump of every call (agent.dump_prompts) and enforces
    # agent.budget from the study's totals in storage
    chain = StagedChain(
        stages,
        name=chain_name,
        client=client,
        roles=roles,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        history=agent.history,
        anonymizer=Anonymizer(mapping=sens, enabled=agent.anonymize),
        prompts=prompts,
        consultant_turns=agent.consultant_turns,
        # grammar-constrained local servers enforce an enum but not float bounds
        schema_grid=SCHEMA_GRID_POINTS if agent.schema_numbers == "grid"
        or (agent.schema_numbers == "auto" and provider == "local") else None,
    )
    logger.info(
        "agent chain %s %s: %s / %s%s", chain_name, list(stages), client.provider,
        client.model, " (cached)" if agent.cache else "",
    )
    return chain
