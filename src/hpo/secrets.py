"""Scrub secrets (API keys, tokens, passwords) out of text before it reaches a file, a log or
storage. Shared by the sampler (prompt dumps, attrs), the agents (prompt copies, reply cache)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "redact", "redact_obj", "secret_values"]

REDACTED = "***"

# Environment variables whose names end like this hold secrets.
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
# Shorter values ("1", "true") are flags, not secrets; replacing them would garble the text.
_MIN_SECRET_LEN = 6


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-looking environment variables, longest first.

    Args:
        environ: The environment to scan; ``os.environ`` when None.

    Returns:
        Every value of a variable whose name ends with ``_API_KEY``, ``_TOKEN``, ``_SECRET`` or
        ``_PASSWORD`` (case-insensitive) and that is at least six characters long.
    """
    env = os.environ if environ is None else environ
    values = {
        value.strip()
        for name, value in env.items()
        if name.upper().endswith(_SECRET_SUFFIXES) and len(value.strip()) >= _MIN_SECRET_LEN
    }
    return sorted(values, key=len, reverse=True)


def redact(
    text: str, *, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> str:
    """``text`` with every secret value replaced by ``***``.

    Args:
        text: Any text: a prompt, a raw reply, a log line, a serialized JSON document.
        extra: More secret values to scrub besides those found in the environment.
        environ: The environment to scan; ``os.environ`` when None.

    Returns:
        The text with each occurrence of a secret replaced by ``***``.
    """
    if not text:
        return text
    return _scrub(text, _secrets(extra, environ))


def redact_obj(
    obj: Any, *, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> Any:
    """A copy of a JSON-like structure with :func:`redact` applied to every string in it.

    Args:
        obj: Nested dicts, lists, tuples, strings, numbers.
        extra: More secret values to scrub.
        environ: The environment to scan; ``os.environ`` when None.

    Returns:
        The same shape with strings (keys included) redacted; tuples become lists.
    """
    return _scrub(obj, _secrets(extra, environ))


def _secrets(extra: Iterable[str], environ: Mapping[str, str] | None) -> list[str]:
    found = set(secret_values(environ))
    found.update(s for s in extra if s and len(s) >= _MIN_SECRET_LEN)
    return sorted(found, key=len, reverse=True)


def _scrub(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
        return obj
    if isinstance(obj, Mapping):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v, secrets) for v in obj]
    return obj
