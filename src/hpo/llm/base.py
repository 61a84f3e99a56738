"""The one small protocol every LLM provider implements. Knows nothing of Optuna.

CONTRACT (shared by hpo.llm, hpo.agents, hpo.samplers): keep these names and signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

Role = Literal["user", "assistant"]

# How a client asks the server for structured output (``agent.structured_output``):
# json_schema: ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM, llama-server,
# Ollama); json_object: ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's server);
# tool: a forced tool call whose input schema is the reply's (Anthropic; OpenAI tools);
# none: the schema in the prompt only; auto: start with the provider's best form and switch once
# to the next when the server rejects it.
StructuredOutput = Literal["auto", "json_schema", "json_object", "tool", "none"]

# Provider-neutral server-side tools a role may ask for (``complete(..., tools=...)``); each
# client maps them to its provider's own form and lists what it supports in ``server_tools``.
ServerTool = Literal["web_search"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass
class Completion(Generic[T]):
    """A parsed reply plus what it cost."""

    reply: T
    usage: Usage
    raw_text: str
    latency_s: float
    model: str  # the model that answered (the reply's ``model`` field), else the requested one
    provider: str
    cached: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    requested_model: str = ""  # the model the client asked for
    # The exact request body sent (messages, response_format or tools, schema), JSON-able and
    # free of secrets: the audit dump writes it as is.
    request: dict[str, Any] = field(default_factory=dict)
    structured_output: str = ""  # the form used: json_schema | json_object | tool | none


class LLMClient(Protocol):
    """``complete(messages, schema) -> typed reply + usage``.

    ``schema``: the JSON schema sent to the server (default: ``reply_model``'s own); the reply
    is still validated into ``reply_model``. ``tools``: server-side tools the model may use
    before answering (see :data:`ServerTool`); a client ignores none silently: it raises
    ``ValueError`` for a tool it does not list in ``server_tools``.
    """

    provider: str
    model: str
    server_tools: frozenset[str]

    def complete(
        self,
        messages: list[Message],
        reply_model: type[T],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        schema: dict[str, Any] | None = None,
        tools: Sequence[ServerTool] | None = None,
    ) -> Completion[T]: ...


class LLMError(Exception):
    """Base of every provider failure. The sampler catches this and falls back.

    Attributes:
        kind: A short machine-readable name (``timeout``, ``auth``, ...), recorded per trial.
        permanent: True when asking again cannot help (bad key, unknown model, a request the
            server rejects): the sampler stops using the LLM for the sweep and says why once.
        request: The exact request that failed (JSON-able, no secrets), for the audit dump.
        fix: One sentence telling the user what to change, when known.
    """

    kind: str = "error"
    permanent: bool = False
    request: dict[str, Any] | None = None
    fix: str | None = None


class LLMAuthError(LLMError):
    kind = "auth"
    permanent = True


class LLMBadRequest(LLMError):
    """The server rejects the request itself (400/422 not about a form we can switch from)."""

    kind = "bad_request"
    permanent = True


class LLMModelNotFound(LLMError):
    """The server does not know the requested model."""

    kind = "model_not_found"
    permanent = True


class LLMTooLarge(LLMError):
    """The reply is larger than ``agent.max_reply_bytes``."""

    kind = "too_large"


class LLMTimeout(LLMError):
    kind = "timeout"


class LLMRateLimited(LLMError):
    kind = "rate_limited"


class LLMServerError(LLMError):
    kind = "server_error"


class LLMConnectionError(LLMError):
    kind = "connection"


class LLMMalformedReply(LLMError):
    """The reply could not be parsed into the requested model."""

    kind = "malformed"

    def __init__(self, message: str, raw_text: str = "", usage: Usage | None = None) -> None:
        super().__init__(message)
        self.raw_text = raw_text
        self.usage = usage or Usage()


class LLMRefusal(LLMError):
    kind = "refusal"
