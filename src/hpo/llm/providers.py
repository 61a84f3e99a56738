"""Provider presets, credential discovery and client construction.

A preset names the SDK (``kind``), a default model, the environment variable holding the API key
and the endpoint. The endpoint is, first found wins: ``agent.base_url`` (the ``base_url``
argument), ``HPO_<PRESET>_BASE_URL``, the vendor variable (``OPENAI_BASE_URL`` for ``openai``
and ``local``, ``ANTHROPIC_BASE_URL`` for ``claude``), the preset's default.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpo.errors import ConfigError
from hpo.llm.base import LLMClient, ServerTool
from hpo.secrets import register_secret

__all__ = [
    "AUTO_ORDER",
    "PRESETS",
    "ProviderPreset",
    "load_dotenv_once",
    "make_client",
    "resolve_auto",
    "resolve_base_url",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderPreset:
    """How to reach one provider.

    Attributes:
        name: Preset name, as in ``agent.provider`` (``claude``, ``openai``, ...).
        kind: Which client speaks to it: ``"anthropic"``, ``"openai"`` (OpenAI-compatible) or
            ``"gemini"`` (OpenAI-compatible, web search through Gemini's native API).
        model: Default model.
        api_key_env: Environment variable holding the key.
        base_url: Default endpoint.
        base_url_envs: Environment variables that override the endpoint, first set wins
            (``HPO_<NAME>_BASE_URL``, then the vendor's own variable where one applies).
        key_required: Whether a missing key is an error (``False`` for local servers).
        model_env: Environment variable that overrides the default model, if any.
        max_tokens_param: Request field of the token cap (OpenAI-compatible kinds only).
        server_tools: Server-side tools of the endpoint (``openai`` kind; the Anthropic and
            Gemini clients list their own).
    """

    name: str
    kind: Literal["anthropic", "openai", "gemini"]
    model: str
    api_key_env: str
    base_url: str | None = None
    base_url_envs: tuple[str, ...] = ()
    key_required: bool = True
    model_env: str | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    server_tools: tuple[ServerTool, ...] = ()


LOCAL_DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
LOCAL_DUMMY_KEY = "local-no-key"

PRESETS: dict[str, ProviderPreset] = {
    p.name: p
    for p in (
        ProviderPreset(
            name="claude",
            kind="anthropic",
            model="claude-sonnet-4-6",
            api_key_env="ANTHROPIC_API_KEY",
            base_url="https://api.anthropic.com",
            base_url_envs=("HPO_CLAUDE_BASE_URL", "ANTHROPIC_BASE_URL"),
        ),
        ProviderPreset(
            name="openai",
            kind="openai",
            model="gpt-4o-mini",
            api_key_env="OPENAI_API_KEY",
            base_url="https://api.openai.com/v1",
            base_url_envs=("HPO_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
            max_tokens_param="max_completion_tokens",
            server_tools=("web_search",),  # through the Responses API
        ),
        ProviderPreset(
            name="deepseek",
            kind="openai",
            model="deepseek-chat",
            api_key_env="DEEPSEEK_API_KEY",
            base_url="https://api.deepseek.com",
            base_url_envs=("HPO_DEEPSEEK_BASE_URL",),
        ),
        ProviderPreset(
            name="gemini",
            kind="gemini",  # web search: native generateContent (HPO_GEMINI_NATIVE_BASE_URL)
            model="gemini-2.0-flash",
            api_key_env="GEMINI_API_KEY",
            base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
            base_url_envs=("HPO_GEMINI_BASE_URL",),
        ),
        ProviderPreset(
            name="openrouter",
            kind="openai",
            model="anthropic/claude-sonnet-4.5",
            api_key_env="OPENROUTER_API_KEY",
            base_url="https://openrouter.ai/api/v1",
            base_url_envs=("HPO_OPENROUTER_BASE_URL",),
        ),
        ProviderPreset(
            name="local",
            kind="openai",
            model="local-model",
            api_key_env="HPO_LOCAL_API_KEY",
            base_url=LOCAL_DEFAULT_BASE_URL,
            base_url_envs=("HPO_LOCAL_BASE_URL", "OPENAI_BASE_URL"),
            key_required=False,
            model_env="HPO_LOCAL_MODEL",
        ),
    )
}

# Aliases accepted wherever a preset name is.
ALIASES: dict[str, str] = {"anthropic": "claude", "ollama": "local", "vllm": "local"}

# resolve_auto() order: the first preset whose key is set wins.
AUTO_ORDER: tuple[str, ...] = ("claude", "openai", "deepseek", "gemini", "openrouter")

_dotenv_loaded: set[Path] = set()


def load_dotenv_once(path: str | os.PathLike[str] | None = None) -> bool:
    """Read ``.env`` (in the current directory by default) into the environment, once per file.

    Variables already set in the environment win; the file's values are never logged.

    Args:
        path: The file to read; ``None`` means ``./.env``.

    Returns:
        True when the file existed and was read now, False otherwise.
    """
    target = Path(path) if path is not None else Path.cwd() / ".env"
    try:
        target = target.resolve()
    except OSError:
        return False
    if target in _dotenv_loaded or not target.is_file():
        return False
    from dotenv import load_dotenv

    _dotenv_loaded.add(target)
    load_dotenv(target, override=False)
    logger.debug("read environment from %s", target)
    return True


def _env(name: str | None) -> str | None:
    if not name:
        return None
    value = os.environ.get(name, "").strip()
    return value or None


def resolve_base_url(preset: ProviderPreset, base_url: str | None = None) -> tuple[str, str]:
    """The endpoint of ``preset`` and where it came from.

    Precedence: ``agent.base_url`` (``base_url``) > ``HPO_<PRESET>_BASE_URL`` > the vendor
    variable (``OPENAI_BASE_URL`` for openai and local, ``ANTHROPIC_BASE_URL`` for claude) >
    the preset's default.

    Returns:
        ``(url, source)``, the source being ``"agent.base_url"``, a variable name or
        ``"default"``.
    """
    if base_url is not None and str(base_url).strip():
        return str(base_url).strip(), "agent.base_url"
    for name in preset.base_url_envs:
        value = _env(name)
        if value:
            return value, name
    return preset.base_url or "", "default"


def _preset(provider: str) -> ProviderPreset:
    name = ALIASES.get(provider.strip().lower(), provider.strip().lower())
    if name in PRESETS:
        return PRESETS[name]
    known = ", ".join([*PRESETS, "auto"])
    raise ConfigError(f"agent provider {provider!r} is unknown: use one of {known} (or none).")


def resolve_auto() -> str | None:
    """Name the first preset with credentials in the environment (or ``./.env``).

    Order: ``ANTHROPIC_API_KEY`` → claude, ``OPENAI_API_KEY`` → openai, ``DEEPSEEK_API_KEY`` →
    deepseek, ``GEMINI_API_KEY`` → gemini, ``OPENROUTER_API_KEY`` → openrouter.

    Returns:
        The preset name, or ``None`` when no key is set.
    """
    load_dotenv_once()
    for name in AUTO_ORDER:
        if _env(PRESETS[name].api_key_env):
            return name
    return None


def make_client(
    *,
    provider: str,
    model: str | None = None,
    api_key_env: str | None = None,
    base_url: str | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 2,
    temperature: float | None = None,
    max_tokens: int = 2048,
    price_in_per_mtok: float | None = None,
    price_out_per_mtok: float | None = None,
    structured_output: str = "auto",
    max_reply_bytes: int | None = None,
) -> LLMClient:
    """Build the client of a preset, reading its key and endpoint from the environment.

    Args:
        provider: Preset name (``claude``, ``openai``, ``deepseek``, ``gemini``, ``openrouter``,
            ``local``) or ``auto`` (see :func:`resolve_auto`).
        model: Model name; ``None`` takes the preset's default.
        api_key_env: Environment variable holding the key; ``None`` takes the preset's.
        base_url: Endpoint (``agent.base_url``); ``None`` takes ``HPO_<NAME>_BASE_URL``, then
            the vendor variable, then the preset's default (see :func:`resolve_base_url`).
        timeout_s: Deadline of one whole call (retries included), seconds.
        max_retries: Retries made by the SDK inside the deadline.
        temperature: Default sampling temperature.
        max_tokens: Default cap on reply tokens.
        price_in_per_mtok: Input price override, USD per million tokens.
        price_out_per_mtok: Output price override, USD per million tokens.
        structured_output: ``auto`` or a pinned form (see :data:`hpo.llm.StructuredOutput`).
        max_reply_bytes: Bytes read per reply before ``LLMTooLarge``; ``None`` = the default.

    Returns:
        An :class:`~hpo.llm.base.LLMClient` whose ``provider`` is the preset name.

    Raises:
        ConfigError: Unknown provider, the key variable of an explicit provider is unset, or
            a bad client setting (one line naming it and the fix).
    """
    load_dotenv_once()
    requested = provider.strip().lower()
    if requested in ("none", "", "null"):
        raise ConfigError(
            f"agent provider {provider!r} means no LLM: do not build a client for it "
            "(or pick agent=auto / agent=claude / agent=openai ...)."
        )
    if requested == "auto":
        found = resolve_auto()
        if found is None:
            envs = ", ".join(PRESETS[n].api_key_env for n in AUTO_ORDER)
            raise ConfigError(
                f"agent=auto found no API key: set one of {envs} (export it or put it in .env), "
                "or use agent=none."
            )
        requested = found
    preset = _preset(requested)

    key_env = api_key_env or preset.api_key_env
    api_key = _env(key_env)
    if api_key is None:
        if preset.key_required:
            raise ConfigError(
                f"agent={preset.name} needs {key_env}: export it or put it in .env "
                "(or use agent=auto / agent=none)."
            )
        api_key = LOCAL_DUMMY_KEY
    else:
        register_secret(api_key)  # redacted everywhere, whatever its variable is called

    url, source = resolve_base_url(preset, base_url)
    chosen_model = model or _env(preset.model_env) or preset.model
    logger.info("agent provider %s: model %s at %s (from %s)", preset.name, chosen_model, url,
                source)

    common: dict[str, Any] = {
        "model": chosen_model,
        "api_key": api_key,
        "base_url": url,
        "timeout_s": timeout_s,
        "max_retries": max_retries,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "price_in_per_mtok": price_in_per_mtok,
        "price_out_per_mtok": price_out_per_mtok,
        "provider": preset.name,
        "structured_output": structured_output,
        "api_key_env": key_env,
    }
    if max_reply_bytes is not None:
        common["max_reply_bytes"] = max_reply_bytes
    try:
        if preset.kind == "anthropic":
            from hpo.llm._anthropic import AnthropicClient

            return AnthropicClient(**common)
        if preset.kind == "gemini":
            from hpo.llm._gemini import GeminiClient

            return GeminiClient(**common, max_tokens_param=preset.max_tokens_param)
        from hpo.llm._openai import OpenAIClient

        return OpenAIClient(
            **common,
            max_tokens_param=preset.max_tokens_param,
            server_tools=preset.server_tools,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
