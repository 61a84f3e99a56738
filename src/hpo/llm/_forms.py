"""Structured-output forms (``agent.structured_output``) and the one switch per rejection.

A client sends the reply's JSON schema in one of four forms (see
:data:`hpo.llm.base.StructuredOutput`). ``auto`` walks an ordered list of forms: it starts with
the first and, when the server rejects the current form (HTTP 400/422/500 whose body names it),
moves to the next one for the rest of the client's life, logging that once. A pinned form is
never switched.

Orders under ``auto``:

- OpenAI-compatible: ``json_schema`` -> ``json_object`` -> ``none``. ``tool`` is left out on
  purpose: a server that rejects ``response_format`` rarely constrains a forced tool call
  either (llama-cpp-python, Ollama and most gateways ignore ``tool_choice`` or answer in text),
  while ``json_object`` with the schema is grammar-constrained on llama-cpp-python and ``none``
  works everywhere with tolerant parsing. A switch to ``tool`` would cost a request and end in
  the same text reply. Pin ``agent.structured_output=tool`` for a server whose tool calling is
  constrained but whose ``response_format`` is not.
- Anthropic: ``tool`` -> ``none``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal

__all__ = ["FORMS", "FormLadder", "check_setting", "schema_hint"]

logger = logging.getLogger("hpo.llm")

Kind = Literal["openai", "anthropic"]

FORMS: tuple[str, ...] = ("json_schema", "json_object", "tool", "none")
SETTINGS: tuple[str, ...] = ("auto", *FORMS)

_AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "openai": ("json_schema", "json_object", "none"),
    "anthropic": ("tool", "none"),
}
_SUPPORTED: dict[str, tuple[str, ...]] = {
    "openai": FORMS,
    "anthropic": ("tool", "none"),
}
# Words a rejection of each form names (the body is lower-cased first).
_RESPONSE_FORMAT_WORDS = ("response_format", "response format", "json_schema", "json_object")
_NAMES: dict[str, tuple[str, ...]] = {
    "json_schema": _RESPONSE_FORMAT_WORDS,
    "json_object": _RESPONSE_FORMAT_WORDS,
    "tool": ("tool", "function"),
    "none": (),
}
_REJECTING_STATUS = frozenset({400, 422, 500})


def check_setting(value: str, kind: Kind, provider: str) -> str:
    """The normalized ``agent.structured_output`` value; ``ValueError`` naming the fix."""
    setting = str(value or "auto").strip().lower()
    if setting not in SETTINGS:
        raise ValueError(
            f"agent.structured_output={value!r} is unknown: use one of {', '.join(SETTINGS)}."
        )
    if setting != "auto" and setting not in _SUPPORTED[kind]:
        raise ValueError(
            f"agent.structured_output={setting} is not available with {provider} (the "
            f"{kind} API): use one of auto, {', '.join(_SUPPORTED[kind])}."
        )
    return setting


def names_form(form: str, text: str) -> bool:
    """Whether an error body ``text`` names ``form`` (or its request field)."""
    low = text.lower()
    return any(word in low for word in _NAMES.get(form, ()))


def schema_hint(schema: dict[str, Any]) -> str:
    """The system-text hint of the ``json_object`` and ``none`` forms (it says "JSON")."""
    return "Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(
        schema, separators=(",", ":"), ensure_ascii=False
    )


class FormLadder:
    """The form a client uses now, and the switches ``auto`` makes (thread-safe).

    Args:
        setting: ``auto`` or a pinned form (already checked by :func:`check_setting`).
        kind: Which API family (decides the ``auto`` order).
        where: ``"provider (model)"`` for the log line.
    """

    def __init__(self, setting: str, kind: Kind, where: str) -> None:
        self.setting = setting
        self._forms = _AUTO_ORDER[kind] if setting == "auto" else (setting,)
        self._index = 0
        self._where = where
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """The form the next request uses."""
        with self._lock:
            return self._forms[self._index]

    def rejects(self, form: str, status: int | None, text: str) -> bool:
        """Whether an error is the server rejecting ``form`` (not some other fault)."""
        return status in _REJECTING_STATUS and names_form(form, text)

    def can_switch(self) -> bool:
        """Whether a form is left after the current one."""
        with self._lock:
            return self._index + 1 < len(self._forms)

    def switch_from(self, form: str, detail: str) -> bool:
        """Move past ``form`` after the server rejected it; False when no form is left.

        Another thread may have switched already: then the current form is simply retried.
        The switch is logged once, at WARNING, naming the form now used and how to pin it.
        """
        with self._lock:
            if self._forms[self._index] != form:
                return True
            if self._index + 1 >= len(self._forms):
                return False
            self._index += 1
            new = self._forms[self._index]
        logger.warning(
            "%s rejects structured output %s (%s): using %s from now on; pin it with "
            "agent.structured_output=%s",
            self._where, form, detail, new, new,
        )
        return True
