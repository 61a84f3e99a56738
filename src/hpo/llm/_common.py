"""Helpers shared by the provider clients."""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import BaseModel

from hpo.llm.base import Completion, LLMMalformedReply, Message, T, Usage
from hpo.llm.parsing import parse_reply

logger = logging.getLogger("hpo.llm")

_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


def schema_name(model_cls: type[BaseModel]) -> str:
    """A tool / json_schema name for ``model_cls`` (``[A-Za-z0-9_-]{1,64}``)."""
    name = _NAME_BAD.sub("_", model_cls.__name__)[:64]
    return name or "reply"


def schema_description(model_cls: type[BaseModel]) -> str:
    """First paragraph of the model's docstring, or a generic description."""
    doc = (model_cls.__doc__ or "").strip()
    if doc and not doc.startswith(("Usage docs:", "!!! abstract")):  # pydantic's own docstring
        return " ".join(doc.split("\n\n", 1)[0].split())[:1000]
    return f"Return the {model_cls.__name__} reply as structured data."


def check_client_args(*, model: str, timeout_s: float, max_retries: int, max_tokens: int) -> None:
    """Raise ``ValueError`` naming the bad constructor argument and the fix."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(
            f"model={model!r} is empty: name the provider's model, e.g. 'gpt-4o-mini'."
        )
    if not timeout_s or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds.")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries={max_retries!r} must be an integer >= 0 (0 disables).")
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive integer, e.g. 2048.")


def check_messages(messages: list[Message]) -> None:
    """Raise ``ValueError`` when ``messages`` is empty or holds a role we cannot send."""
    if not messages:
        raise ValueError("messages is empty: pass at least one Message(role='user', ...).")
    for m in messages:
        if m.role not in ("user", "assistant"):
            raise ValueError(
                f"message role {m.role!r} is not 'user' or 'assistant': "
                "pass system text through system=."
            )


def parse_text_reply(text: str, reply_model: type[T], usage: Usage, *, truncated: bool) -> T:
    """Parse a text reply; a malformed one cut at max_tokens says to raise max_tokens."""
    try:
        return parse_reply(text, reply_model, usage=usage)
    except LLMMalformedReply as exc:
        if truncated:
            raise LLMMalformedReply(
                f"{exc} (reply cut at max_tokens: raise max_tokens)", text, usage
            ) from None
        raise


def completion(
    client: Any, response: Any, *, reply: T, usage: Usage, raw_text: str, latency: float,
    extra: dict[str, object],
) -> Completion[T]:
    """The ``Completion`` of a provider ``response`` (logged at debug level)."""
    logger.debug(
        "%s %s: %d in / %d out tokens, %.2fs",
        client.provider, client.model, usage.input_tokens, usage.output_tokens, latency,
    )
    return Completion(
        reply=reply,
        usage=usage,
        raw_text=raw_text,
        latency_s=latency,
        model=getattr(response, "model", None) or client.model,
        provider=client.provider,
        extra={**extra, "id": getattr(response, "id", None)},
    )
