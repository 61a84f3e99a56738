"""Tolerant parsing of LLM replies into pydantic models.

LLM output is data: it is decoded as JSON and validated by pydantic, never executed. The parser
accepts raw JSON, JSON inside prose, JSON inside markdown fences and JSON with trailing commas.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from pydantic import ValidationError

from hpo.llm.base import LLMMalformedReply, T, Usage

__all__ = ["extract_json_objects", "parse_reply", "validate_reply"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_MAX_SNIPPET = 160


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_SNIPPET else flat[: _MAX_SNIPPET - 3] + "..."


def _decode_candidates(text: str) -> list[Any]:
    """Every top-level JSON object found in ``text``, most likely first.

    Raw control characters (a newline) inside strings are accepted: grammar-constrained local
    servers emit them, and rejecting the whole reply for a line break in a rationale would throw
    the proposal away.
    """
    decoder = json.JSONDecoder(strict=False)
    found: list[Any] = []
    stripped = text.strip()
    with contextlib.suppress(ValueError):
        found.append(decoder.decode(stripped))
    for block in _FENCE.findall(text):
        try:
            found.append(decoder.decode(block.strip()))
        except ValueError:
            continue
    # Scan for objects embedded in prose; skip over an object once decoded (no nested hits).
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        found.append(obj)
        i = text.find("{", end)
    return found


def extract_json_objects(text: str) -> list[Any]:
    """Return the JSON values found in ``text``, trying trailing-comma repair as a last resort.

    Args:
        text: The reply text of an LLM.

    Returns:
        Decoded JSON values (usually dicts), most likely first; empty when none decodes.
    """
    found = _decode_candidates(text)
    # repair even when something decoded: with "{..., {inner},}" only the inner object does,
    # and the caller validates candidates in order, so the repaired ones come last
    repaired = _TRAILING_COMMA.sub(r"\1", text)
    if repaired != text:
        found.extend(obj for obj in _decode_candidates(repaired) if obj not in found)
    return found


def _short_validation_message(exc: ValidationError, model_name: str) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - len(parts)
    tail = f" (+{more} more)" if more > 0 else ""
    return f"reply does not fit {model_name}: " + "; ".join(parts) + tail


def validate_reply(
    obj: Any, model_cls: type[T], *, raw_text: str = "", usage: Usage | None = None
) -> T:
    """Validate an already decoded JSON value against ``model_cls``.

    Args:
        obj: The decoded JSON value (e.g. an Anthropic ``tool_use`` input).
        model_cls: The pydantic model of the expected reply.
        raw_text: The raw reply text, kept on the error for audit.
        usage: Tokens the failed call cost, kept on the error for accounting.

    Returns:
        The validated model instance.

    Raises:
        LLMMalformedReply: When the value does not fit the model.
    """
    try:
        return model_cls.model_validate(obj)
    except ValidationError as exc:
        raise LLMMalformedReply(
            _short_validation_message(exc, model_cls.__name__), raw_text, usage
        ) from None


def parse_reply(text: str, model_cls: type[T], *, usage: Usage | None = None) -> T:
    """Parse an LLM reply text into ``model_cls``, tolerating prose, fences and trailing commas.

    Args:
        text: The raw reply text.
        model_cls: The pydantic model of the expected reply.
        usage: Tokens the call cost, attached to the error when parsing fails.

    Returns:
        The first JSON object in ``text`` that validates against ``model_cls``.

    Raises:
        LLMMalformedReply: When no JSON object is found, or none fits the model (the message
            then names the first offending fields).
    """
    if not text or not text.strip():
        raise LLMMalformedReply("reply is empty: expected a JSON object", text or "", usage)
    candidates = [obj for obj in extract_json_objects(text) if isinstance(obj, dict)]
    if not candidates:
        raise LLMMalformedReply(f"reply holds no JSON object: {_snippet(text)!r}", text, usage)
    first_error: LLMMalformedReply | None = None
    for obj in candidates:
        try:
            return validate_reply(obj, model_cls, raw_text=text, usage=usage)
        except LLMMalformedReply as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error
