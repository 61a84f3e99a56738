"""Helpers shared by the provider clients."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from hpo.llm._forms import FormLadder
from hpo.llm._transport import CallScope, call_scope
from hpo.llm.base import (
    Completion,
    LLMBadRequest,
    LLMError,
    LLMMalformedReply,
    Message,
    ServerTool,
    T,
    Usage,
)
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


class ReplySpec:
    """The reply's tool / schema name, its description and the JSON schema sent."""

    def __init__(self, reply_model: type[BaseModel], schema: dict[str, Any] | None) -> None:
        self.name = schema_name(reply_model)
        self.description = schema_description(reply_model)
        self.schema = schema if schema is not None else reply_model.model_json_schema()


def check_client_args(
    *, model: str, timeout_s: float, max_retries: int, max_tokens: int, max_reply_bytes: int
) -> None:
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
    if not isinstance(max_reply_bytes, int) or max_reply_bytes < 1024:
        raise ValueError(
            f"max_reply_bytes={max_reply_bytes!r} must be an integer >= 1024, e.g. 262144."
        )


def check_tools(
    tools: Iterable[Any] | None, supported: frozenset[str], where: str
) -> tuple[str, ...]:
    """The provider-neutral tool names asked for; ``ValueError`` for one the client lacks.

    A mapping with a ``name`` (e.g. Anthropic's ``{"type": "web_search_20250305",
    "name": "web_search"}``) counts as that name.
    """
    names: list[str] = []
    for tool in tools or ():
        name = str(tool.get("name", "")) if isinstance(tool, Mapping) else str(tool)
        if name not in supported:
            have = ", ".join(sorted(supported)) or "none"
            raise ValueError(
                f"{where} cannot use the server tool {name!r} (it supports: {have}): ask "
                "without it, or pick a provider that has it."
            )
        if name not in names:
            names.append(name)
    return tuple(names)


class Once:
    """True the first time it is called, False after (thread-safe)."""

    def __init__(self) -> None:
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
        return first


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


def with_hint(system: str | None, hint: str) -> str:
    """``system`` followed by ``hint`` after a blank line."""
    return f"{system}\n\n{hint}" if system else hint


def completion(
    client: Any, response: Any, *, reply: T, usage: Usage, raw_text: str, latency: float,
    extra: dict[str, object], request: dict[str, Any], form: str, model_noted: Once,
) -> Completion[T]:
    """The ``Completion`` of a provider ``response`` (logged at debug level).

    ``model`` is the model that answered (the reply's ``model`` field); when it differs from
    the one asked for, that is logged once per client at INFO (servers such as
    llama-cpp-python answer with their own alias: worth knowing, not an error).
    """
    answered = str(getattr(response, "model", None) or client.model)
    if answered != client.model and model_noted():
        logger.info(
            "%s: asked for model %s, the server answered as %s (recorded as the model)",
            client.provider, client.model, answered,
        )
    logger.debug(
        "%s %s: %d in / %d out tokens, %.2fs",
        client.provider, answered, usage.input_tokens, usage.output_tokens, latency,
    )
    return Completion(
        reply=reply,
        usage=usage,
        raw_text=raw_text,
        latency_s=latency,
        model=answered,
        provider=client.provider,
        extra={**extra, "id": getattr(response, "id", None)},
        requested_model=client.model,
        request=request,
        structured_output=form,
    )


@dataclass(frozen=True)
class Ask:
    """One call's arguments, as the clients build requests from them."""

    messages: list[Message]
    spec: ReplySpec
    system: str | None
    temperature: float | None
    max_tokens: int | None
    tools: tuple[str, ...]


class ClientBase:
    """What both SDK clients share: the call template inside one deadline, the structured-
    output form state and the error for a form the server rejects.

    Subclasses set the attributes below and implement ``_send`` (send in the current form,
    switching on rejection; returns the SDK response, the body built and the form used),
    ``_reply`` (parse the response) and ``_wire`` (the JSON body of ``create(**body)``).
    """

    provider: str
    model: str
    timeout_s: float
    structured_output: str
    server_tools: frozenset[str]
    _where: str
    _forms: FormLadder

    @property
    def form(self) -> str:
        """The structured-output form the next request uses."""
        return self._forms.current

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
    ) -> Completion[T]:
        """Ask the model and return its reply parsed into ``reply_model``.

        The whole call (the SDK's retries and a form switch included) ends by
        ``timeout_s``.

        Args:
            messages: The conversation (user/assistant turns).
            reply_model: The pydantic model the reply is validated into.
            system: System text.
            temperature: Overrides the client's temperature.
            max_tokens: Overrides the client's reply token cap.
            schema: The JSON schema sent (default: ``reply_model``'s).
            tools: Server tools the model may use first (see ``server_tools``).

        Raises:
            ValueError: Empty messages, or a tool this client does not offer.
            LLMError: A subclass naming what failed; ``permanent`` ones carry a ``fix``,
                every one the ``request`` that failed.
        """
        check_messages(messages)
        ask = Ask(
            messages=messages,
            spec=ReplySpec(reply_model, schema),
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            tools=check_tools(tools, self.server_tools, self._where),
        )
        start = time.perf_counter()
        with call_scope(self.timeout_s) as scope:
            response, body, form = self._send(scope, ask)
        latency = time.perf_counter() - start
        request = scope.last_body or self._wire(body)
        try:
            return self._reply(response, reply_model, ask, latency, request, form)
        except LLMError as exc:
            exc.request = request
            raise

    def _send(self, scope: CallScope, ask: Ask) -> tuple[Any, dict[str, Any], str]:
        raise NotImplementedError

    def _reply(
        self, response: Any, reply_model: type[T], ask: Ask, latency: float,
        request: dict[str, Any], form: str,
    ) -> Completion[T]:
        raise NotImplementedError

    def _wire(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def _form_rejected(self, err: LLMError, status: int | None, text: str, form: str) -> LLMError:
        """``err``, or a permanent ``LLMBadRequest`` when it is the server rejecting ``form``
        with no form left to switch to."""
        if not self._forms.rejects(form, status, text):
            return err
        other = "none" if self.structured_output == "auto" else "auto"
        rejected = LLMBadRequest(f"{err} (structured output {form})")
        rejected.request = err.request
        rejected.fix = (
            f"the server rejects structured output {form}: set agent.structured_output={other}."
        )
        return rejected
