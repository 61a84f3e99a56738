"""Scrub secrets (API keys, tokens, passwords) out of text before it reaches a file, a log or
storage. The one redaction of hpo: the log records of the whole process (see
:mod:`hpo._logging`), the audit dumps, the reply cache, the prompt copies and every attr and
note the sampler stores go through :func:`redact` / :func:`redact_obj`.

Two things are removed:

- **configured secret values**: the value of every environment variable whose name ends in
  ``_API_KEY``, ``_TOKEN``, ``_SECRET`` or ``_PASSWORD`` (``.env`` is read into the environment
  by :func:`hpo.llm.load_dotenv_once`), read at each call so a key set later is covered, plus
  every value handed to :func:`register_secret` (the key an LLM client read from
  ``agent.api_key_env``, whatever that variable is called);
- **secret-shaped text**, whoever sent it (an LLM reply echoing a header, an SDK error body):
  see :data:`SECRET_PATTERNS`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "KEY_MARGIN",
    "REDACTED",
    "SECRET_PATTERNS",
    "TRUNCATED",
    "redact",
    "redact_head",
    "redact_obj",
    "register_secret",
    "secret_values",
]

REDACTED = "***"
#: The mark ending a text that was cut after its redaction (``n``: its whole length).
TRUNCATED = "… [truncated: {n} characters in all]"
#: Characters redacted past a cut (:func:`redact_head`): longer than any key or token.
KEY_MARGIN = 1024

# Environment variables whose names end like this hold secrets.
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
# Shorter values ("1", "true") are flags, not secrets; replacing them would garble the text.
_MIN_SECRET_LEN = 6

# Names of fields that hold a secret in ``name: value`` / ``name=value`` / ``"name": "value"``
# text (headers, query strings, JSON, env files); any prefix is allowed (OPENAI_API_KEY=...,
# x-goog-api-key: ...) and left alone, as the text before a match is. "token" alone is not one:
# max_tokens=2048 is no secret. Every repetition before the secret itself is bounded, so the
# scan stays linear in the text (an unbounded prefix made a 200 KB word take minutes).
_SECRET_FIELDS = (
    r"api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|secret[_-]?key"
    r"|client[_-]?secret|password|passwd|authorization"
)

#: Secret-shaped text, redacted wherever it appears, as ``(what, regex)``: the regex's group
#: ``keep`` (when present) is kept, the rest of the match becomes ``***``. The unit test of
#: each row is ``tests/core/test_secrets.py::test_secret_patterns``.
SECRET_PATTERNS: tuple[tuple[str, str], ...] = (
    # "Authorization: Bearer <token>", as a reply echoing the request headers shows it; a
    # token has a digit in it ("Bearer authentication" is prose)
    ("bearer token", r"(?P<keep>\b[Bb][Ee][Aa][Rr][Ee][Rr]\s+)(?=[^\s\"',;]*\d)"
                     r"[A-Za-z0-9._~+/-]{8,}=*"),
    # OpenAI, Anthropic (sk-ant-...), DeepSeek, OpenRouter (sk-or-...) keys, even in part
    ("sk- key", r"\bsk-[A-Za-z0-9_-]{16,}"),
    # Google API keys (Gemini)
    ("Google API key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    # the password of a URL: scheme://user:password@host
    ("URL password", r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^/\s:@]{1,256}:)"
                     r"[^/\s@]{1,256}(?=@)"),
    # api_key=..., "x-api-key": "...", OPENAI_API_KEY=..., password: ..., Authorization: ...
    ("secret field", rf"(?i:(?P<keep>(?:{_SECRET_FIELDS})[\"']?\s{{0,8}}[:=]\s{{0,8}}[\"']?"
                     r"(?:basic\s+)?))(?!\*\*\*|(?i:bearer)\s)[^\s\"',;&}\]]{6,}"),
)

# one pass over the text: the alternatives in order, each ``keep`` group renamed ``keep<i>``
_PATTERN = re.compile("|".join(
    "(?:" + rx.replace("(?P<keep>", f"(?P<keep{i}>") + ")"
    for i, (_, rx) in enumerate(SECRET_PATTERNS)
))

# every match of _PATTERN contains one of these (lower-cased): text without any is left alone
# at the cost of one lower() and a few substring searches (most log records)
_TRIGGERS = ("bearer", "sk-", "aiza", "://", "api", "token", "secret", "passw", "authorization")

_registered: set[str] = set()
_registered_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` too, from now on, everywhere in this process.

    For secrets whose variable name does not look secret (``agent.api_key_env=MY_LLM_CRED``):
    the LLM clients register the key they read. Values shorter than six characters are
    ignored (they would garble ordinary text).
    """
    if value and len(value.strip()) >= _MIN_SECRET_LEN:
        with _registered_lock:
            _registered.add(value.strip())


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The configured secret values, longest first.

    Args:
        environ: The environment to scan; ``os.environ`` when None.

    Returns:
        Every value of a variable whose name ends with ``_API_KEY``, ``_TOKEN``, ``_SECRET`` or
        ``_PASSWORD`` (case-insensitive) and that is at least six characters long, and every
        value given to :func:`register_secret`.
    """
    env = os.environ if environ is None else environ
    names = [name for name in list(env) if name.upper().endswith(_SECRET_SUFFIXES)]
    found = (env.get(name, "").strip() for name in names)  # only secret-looking ones decoded
    values = {v for v in found if len(v) >= _MIN_SECRET_LEN}
    with _registered_lock:
        values.update(_registered)
    return sorted(values, key=len, reverse=True)


def redact(
    text: str, *, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> str:
    """``text`` with every secret value and every secret-shaped string replaced by ``***``.

    Args:
        text: Any text: a prompt, a raw reply, a log line, a serialized JSON document.
        extra: More secret values to scrub besides the configured ones.
        environ: The environment to scan; ``os.environ`` when None.

    Returns:
        The text with each secret replaced by ``***`` (a field name or ``Bearer`` before it is
        kept: ``Authorization: Bearer ***``).
    """
    if not text:
        return text
    return _scrub(text, _secrets(extra, environ))


def redact_head(text: str, keep: int) -> str:
    """:func:`redact` of the part of ``text`` that a cut at ``keep`` characters can keep.

    The first ``keep`` + :data:`KEY_MARGIN` characters are redacted, the rest is dropped: a key
    that starts before the cut ends within the margin, so it is found whole and no half of it
    is left, and a text of megabytes costs no more than a short one. The caller cuts the result
    at ``keep`` (and marks it with :data:`TRUNCATED` when ``len(text) > keep``).
    """
    return redact(text[: keep + KEY_MARGIN])


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
        lowered = obj.lower()
        if any(t in lowered for t in _TRIGGERS):
            obj = _PATTERN.sub(_masked, obj)
        return obj
    if isinstance(obj, Mapping):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v, secrets) for v in obj]
    return obj


def _masked(match: re.Match[str]) -> str:
    # only the alternative that matched has a ``keep<i>`` group that is not None
    keep = next((v for v in match.groupdict().values() if v is not None), "")
    return keep + REDACTED
