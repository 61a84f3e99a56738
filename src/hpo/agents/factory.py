"""Build an agent chain from a plain mapping shaped like ``conf/agent/*.yaml``.

No Hydra here: the sweeper converts its config to a dict first. Keys (all optional)::

    provider: auto          # auto | claude | openai | deepseek | gemini | openrouter | local
                            # | none
    model: null             # null = the preset's default model
    base_url: null          # null = HPO_<PRESET>_BASE_URL, then OPENAI_BASE_URL (openai, local) /
                            # ANTHROPIC_BASE_URL (claude), then the preset's endpoint
    temperature: 0.7
    timeout_s: 60           # deadline of one whole LLM call, the SDK's retries included
    max_retries: 2          # the SDK's retries (429/5xx), inside the deadline
    max_tokens: 2048
    structured_output: auto # auto | json_schema | json_object | tool | none
    max_reply_bytes: 262144 # bytes read per reply; beyond: an error of kind too_large
    chain: diagnose         # a preset (single | diagnose | consultants | planner) or a list of
                            # stages, e.g. [analyst, consultants, supervisor, checker]
    consultant_turns: 2
    schema_numbers: auto    # numbers in the reply schema: bounds | grid (an enum of about 12
                            # values) | auto (grid for the local provider, bounds otherwise)
    researcher: false       # insert a researcher stage (after the analyst, else first)
    anonymize: true
    sensitive: []           # extra strings to anonymize (besides the caller's names)
    history: {best_k: 8, recent_k: 8}
    roles: {}               # per-role overrides: model, temperature, timeout_s, max_retries, ...
    fallback_share: 0.0     # read by the sampler; validated here
    mode: propose           # the sampler's keys (mode, leader, llm_share, llm_floor,
    leader: auto            # adaptive_share, startup_trials, stall_trials, rank_candidates):
    llm_share: 0.25         # read and validated by hpo.samplers.sampler_from_agent_config
    budget: {max_tokens: null, max_usd: null}
    cache: false
    cache_dir: outputs/.llm_cache
    dump_prompts: true      # the sampler dumps every call under <sweep dir>/llm
    prompts_dir: null       # a directory of replacement prompt templates
    context: null           # the task in a few sentences, shown to every role (the sampler's)
"""

from __future__ import annotations

import logging
import os
import threading
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpo.agents.cache import CachingClient
from hpo.agents.chain import AgentChain, Budget, RoleSettings, StagedChain
from hpo.agents.history import Anonymizer, HistoryOptions
from hpo.agents.prompts import PromptSet
from hpo.agents.stages import chain_stages
from hpo.errors import ConfigError
from hpo.llm.base import LLMClient, StructuredOutput

__all__ = ["NO_CREDENTIALS_WARNING", "ROLE_NAMES", "build_chain", "chain_config"]

logger = logging.getLogger(__name__)

# Values per numeric parameter when the reply schema lists a grid (agent.schema_numbers).
SCHEMA_GRID_POINTS = 12

NO_CREDENTIALS_WARNING = (
    "No LLM credentials found (ANTHROPIC_API_KEY, OPENAI_API_KEY, DEEPSEEK_API_KEY, "
    "GEMINI_API_KEY, OPENROUTER_API_KEY): proposals come from the classical fallback sampler "
    "(TPE), NOT from an LLM. Set one of them (or put it in .env) to enable the LLM agent chain; "
    "agent=none silences this."
)

ROLE_NAMES = (
    "analyst",
    "proposer",
    "consultant",
    "consultant_a",
    "consultant_b",
    "supervisor",
    "planner",
    "researcher",
    "repair",
)

# Settings that need a client of their own when a role overrides them.
_CLIENT_KEYS = (
    "provider",
    "model",
    "api_key_env",
    "base_url",
    "timeout_s",
    "max_retries",
    "price_in_per_mtok",
    "price_out_per_mtok",
    "structured_output",
    "max_reply_bytes",
    "json_mode",  # deprecated: true means structured_output=json_object
)
_ROLE_KEYS = (*_CLIENT_KEYS, "temperature", "max_tokens")
_KNOWN_KEYS = (
    *_ROLE_KEYS,
    "chain",
    "consultant_turns",
    "schema_numbers",
    "researcher",
    "anonymize",
    "sensitive",
    "history",
    "roles",
    "fallback_share",
    # the sampler's own keys, read and validated by hpo.samplers.sampler_from_agent_config
    "mode",
    "leader",
    "llm_share",
    "llm_floor",
    "adaptive_share",
    "startup_trials",
    "stall_trials",
    "rank_candidates",
    "budget",
    "cache",
    "cache_dir",
    "dump_prompts",
    "prompts_dir",
    "context",
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


# Keys that existed once: what replaced them.
_REMOVED_KEYS = {
    "dump_dir": "the sampler writes one JSON audit dump per call under <sweep dir>/llm "
                "(agent.dump_prompts): remove agent.dump_dir",
}


def _check_keys(cfg: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key, why in _REMOVED_KEYS.items():
        if key in cfg:
            raise ConfigError(f"{where} key {key!r} was removed: {why}")
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {unknown}: use only {', '.join(sorted(set(known)))}"
        )


def _num(cfg: Mapping[str, Any], key: str, *, low: float, integer: bool = False,
         high: float | None = None) -> Any:
    value = cfg.get(key)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value) == int(value)
    if not ok or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"agent.{key}={value!r} is invalid: use {kind} {rng} (or null)")
    return int(value) if integer else float(value)


_warned_json_mode = threading.Event()


def _structured_output(cfg: Mapping[str, Any]) -> str | None:
    """``agent.structured_output``, with the deprecated ``agent.json_mode=true`` read as
    ``json_object`` (one warning)."""
    value = cfg.get("structured_output")
    if cfg.get("json_mode") and value in (None, "auto"):
        if not _warned_json_mode.is_set():
            _warned_json_mode.set()
            logger.warning("agent.json_mode is deprecated: use agent.structured_output="
                           "json_object (it now sends the schema too)")
        return "json_object"
    if value is None:
        return None
    text = str(value).strip().lower()
    known = typing.get_args(StructuredOutput)
    if text not in known:
        raise ConfigError(
            f"agent.structured_output={value!r} is unknown: use one of {', '.join(known)}"
        )
    return text


def _client_kwargs(cfg: Mapping[str, Any], provider: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"provider": provider}
    for key in ("model", "api_key_env", "base_url", "price_in_per_mtok", "price_out_per_mtok"):
        if cfg.get(key) is not None:
            kw[key] = cfg[key]
    form = _structured_output(cfg)
    if form is not None:
        kw["structured_output"] = form
    reply_cap = _num(cfg, "max_reply_bytes", low=1024, integer=True)
    if reply_cap is not None:
        kw["max_reply_bytes"] = reply_cap
    timeout = _num(cfg, "timeout_s", low=1e-3)
    if timeout is not None:
        kw["timeout_s"] = timeout
    retries = _num(cfg, "max_retries", low=0, integer=True)
    if retries is not None:
        kw["max_retries"] = retries
    max_tokens = _num(cfg, "max_tokens", low=1, integer=True)
    if max_tokens is not None:
        kw["max_tokens"] = max_tokens
    return kw


def chain_config(agent_cfg: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The chain's name and stages from ``agent.chain`` and ``agent.researcher``.

    Raises:
        ConfigError: An unknown preset or stage, or a list that cannot run (one line naming the
            bad value and the fix).
    """
    try:
        return chain_stages(agent_cfg.get("chain"),
                            researcher=bool(agent_cfg.get("researcher", False)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_chain(
    agent_cfg: Mapping[str, Any],
    *,
    sensitive: Mapping[str, str] | None = None,
) -> AgentChain | None:
    """The agent chain described by ``agent_cfg``, or None when no LLM is to be used.

    Args:
        agent_cfg: A plain mapping shaped like ``conf/agent/*.yaml`` (see the module docstring).
        sensitive: Caller-known sensitive strings -> neutral tokens (dataset, model and study
            names, project paths), e.g. from :meth:`Anonymizer.from_names`'s mapping.

    Returns:
        The chain; None for ``provider: none``, and for ``provider: auto`` when no credentials
        are found (then one WARNING is logged per process).

    Raises:
        ConfigError: An invalid value, an unknown key, or an explicit provider whose key is unset.
    """
    if not isinstance(agent_cfg, Mapping):
        raise ConfigError(
            f"agent config {agent_cfg!r} is not a mapping: pass a dict shaped like "
            "conf/agent/auto.yaml"
        )
    cfg = dict(agent_cfg)
    _check_keys(cfg, _KNOWN_KEYS, "agent config")
    # checked before deciding there is no LLM, so a typo never passes silently
    chain_name, stages = chain_config(cfg)
    turns = _num(cfg, "consultant_turns", low=1, integer=True)
    numbers = str(cfg.get("schema_numbers") or "auto").strip().lower()
    if numbers not in ("auto", "bounds", "grid"):
        raise ConfigError(
            f"agent.schema_numbers={cfg.get('schema_numbers')!r} is unknown: use auto, bounds "
            "or grid"
        )
    temperature = _num(cfg, "temperature", low=0.0, high=2.0)
    _num(cfg, "fallback_share", low=0.0, high=1.0)
    provider = str(cfg.get("provider") or "none").strip().lower()
    if provider in ("none", "null", "off", "false"):
        return None

    from hpo.llm.providers import load_dotenv_once, make_client, resolve_auto

    load_dotenv_once()
    if provider == "auto":
        found = resolve_auto()
        if found is None:
            _warn_no_credentials_once()
            return None
        provider = found


    cache = bool(cfg.get("cache", False))
    cache_dir = _path(cfg.get("cache_dir") or "outputs/.llm_cache")

    def wrap(client: LLMClient) -> LLMClient:
        return CachingClient(client, cache_dir) if cache else client

    base_kwargs = _client_kwargs(cfg, provider)
    client = wrap(make_client(**base_kwargs, temperature=temperature))

    roles_cfg = cfg.get("roles") or {}
    if not isinstance(roles_cfg, Mapping):
        raise ConfigError(f"agent.roles={roles_cfg!r} is not a mapping: use e.g. "
                          "{analyst: {model: ..., temperature: 0.2}}")
    roles: dict[str, RoleSettings] = {}
    for role, over in roles_cfg.items():
        if role not in ROLE_NAMES:
            raise ConfigError(
                f"agent.roles.{role} is not a role: use one of {', '.join(ROLE_NAMES)}"
            )
        over = dict(over or {})
        _check_keys(over, _ROLE_KEYS, f"agent.roles.{role}")
        r_temp = _num(over, "temperature", low=0.0, high=2.0)
        r_max = _num(over, "max_tokens", low=1, integer=True)
        role_client = client
        if any(k in over for k in _CLIENT_KEYS):
            merged = {**{k: cfg.get(k) for k in _CLIENT_KEYS if k != "provider"}, **over}
            r_provider = str(over.get("provider") or provider).strip().lower()
            if r_provider == "auto":
                r_provider = provider
            role_client = wrap(make_client(
                **_client_kwargs(merged, r_provider),
                temperature=temperature if r_temp is None else r_temp,
            ))
        roles[str(role)] = RoleSettings(
            client=role_client,
            temperature=temperature if r_temp is None else r_temp,
            max_tokens=r_max if r_max is not None else base_kwargs.get("max_tokens"),
        )

    sens = dict(sensitive or {})
    extra = cfg.get("sensitive") or []
    if isinstance(extra, str) or not isinstance(extra, Sequence):
        raise ConfigError(f"agent.sensitive={extra!r} is not a list: use e.g. [my_dataset]")
    for i, term in enumerate(extra, start=1):
        sens.setdefault(str(term), f"term_{i}")
    anonymizer = Anonymizer(mapping=sens, enabled=bool(cfg.get("anonymize", True)))

    hist = cfg.get("history") or {}
    if not isinstance(hist, Mapping):
        raise ConfigError(
            f"agent.history={hist!r} is not a mapping: use {{best_k: 8, recent_k: 8}}"
        )
    try:
        history = HistoryOptions.from_mapping(hist)
    except ValueError as exc:
        raise ConfigError(f"agent.{exc}") from None

    budget_cfg = cfg.get("budget") or {}
    if not isinstance(budget_cfg, Mapping):
        raise ConfigError(f"agent.budget={budget_cfg!r} is not a mapping: use "
                          "{max_tokens: null, max_usd: null}")
    _check_keys(budget_cfg, ("max_tokens", "max_usd"), "agent.budget")
    budget = Budget(
        max_tokens=_num(budget_cfg, "max_tokens", low=1, integer=True),
        max_usd=_num(budget_cfg, "max_usd", low=0.0),
    )

    prompts_dir = cfg.get("prompts_dir")
    try:
        prompts = PromptSet(directory=_path(prompts_dir) if prompts_dir else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # the sampler writes the one audit dump of every call (agent.dump_prompts)
    chain = StagedChain(
        stages,
        name=chain_name,
        client=client,
        roles=roles,
        temperature=temperature,
        max_tokens=base_kwargs.get("max_tokens"),
        history=history,
        anonymizer=anonymizer,
        prompts=prompts,
        budget=budget,
        consultant_turns=2 if turns is None else turns,
        # grammar-constrained local servers enforce an enum but not float bounds
        schema_grid=SCHEMA_GRID_POINTS
        if numbers == "grid" or (numbers == "auto" and provider == "local") else None,
    )
    logger.info(
        "agent chain %s %s: %s / %s%s", chain_name, list(stages), client.provider,
        client.model, " (cached)" if cache else "",
    )
    return chain
