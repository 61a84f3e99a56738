"""LLM providers behind one small protocol: ``complete(messages, schema) -> typed reply + usage``.

The SDK-backed clients (``AnthropicClient``, ``OpenAIClient``) are imported lazily, so importing
this package does not pay for the ``anthropic``/``openai`` imports until a client is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.llm.base import (
    Completion,
    LLMAuthError,
    LLMBadRequest,
    LLMClient,
    LLMConnectionError,
    LLMError,
    LLMMalformedReply,
    LLMModelNotFound,
    LLMRateLimited,
    LLMRefusal,
    LLMServerError,
    LLMTimeout,
    LLMTooLarge,
    Message,
    ServerTool,
    StructuredOutput,
    Usage,
)
from hpo.llm.parsing import extract_json_objects, parse_reply, validate_reply
from hpo.llm.pricing import PRICES, cost_usd, price_for
from hpo.llm.providers import (
    AUTO_ORDER,
    PRESETS,
    ProviderPreset,
    load_dotenv_once,
    make_client,
    resolve_auto,
    resolve_base_url,
)

if TYPE_CHECKING:
    from hpo.llm._anthropic import AnthropicClient
    from hpo.llm._openai import OpenAIClient

__all__ = [
    "AUTO_ORDER",
    "PRESETS",
    "PRICES",
    "AnthropicClient",
    "Completion",
    "LLMAuthError",
    "LLMBadRequest",
    "LLMClient",
    "LLMConnectionError",
    "LLMError",
    "LLMMalformedReply",
    "LLMModelNotFound",
    "LLMRateLimited",
    "LLMRefusal",
    "LLMServerError",
    "LLMTimeout",
    "LLMTooLarge",
    "Message",
    "OpenAIClient",
    "ProviderPreset",
    "ServerTool",
    "StructuredOutput",
    "Usage",
    "cost_usd",
    "extract_json_objects",
    "load_dotenv_once",
    "make_client",
    "parse_reply",
    "price_for",
    "resolve_auto",
    "resolve_base_url",
    "validate_reply",
]


def __getattr__(name: str) -> Any:
    if name == "AnthropicClient":
        from hpo.llm._anthropic import AnthropicClient

        return AnthropicClient
    if name == "OpenAIClient":
        from hpo.llm._openai import OpenAIClient

        return OpenAIClient
    raise AttributeError(f"module 'hpo.llm' has no attribute {name!r}")
