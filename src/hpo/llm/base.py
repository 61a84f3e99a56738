"""The one small protocol every LLM provider implements. Knows nothing of Optuna.

CONTRACT (shared by hpo.llm, hpo.agents, hpo.samplers): keep these names and signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

Role = Literal["user", "assistant"]


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
    model: str
    provider: str
    cached: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class LLMClient(Protocol):
    """``complete(messages, schema) -> typed reply + usage``."""

    provider: str
    model: str

    def complete(
        self,
        messages: list[Message],
        reply_model: type[T],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion[T]: ...


class LLMError(Exception):
    """Base of every provider failure. The sampler catches this and falls back."""

    kind: str = "error"


class LLMAuthError(LLMError):
    kind = "auth"


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
