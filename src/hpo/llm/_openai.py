"""OpenAI-compatible Chat Completions (OpenAI, DeepSeek, Gemini, OpenRouter, vLLM, Ollama,
llama.cpp), and OpenAI's Responses API for web search."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Literal

import openai

from hpo.llm._common import (
    Ask,
    ClientBase,
    Once,
    check_client_args,
    completion,
    parse_text_reply,
    with_hint,
)
from hpo.llm._forms import FormLadder, check_setting, names_form, schema_hint
from hpo.llm._transport import DEFAULT_MAX_REPLY_BYTES, CallScope, Stop, http_client
from hpo.llm.base import (
    Completion,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMMalformedReply,
    LLMModelNotFound,
    LLMRefusal,
    ServerTool,
    T,
    Usage,
)
from hpo.llm.errors import error_text, map_sdk_error, safe_cause, scrub
from hpo.llm.pricing import cost_usd

__all__ = ["OpenAIClient"]

logger = logging.getLogger(__name__)

MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]

# The served model ids named in an unknown model's fix, at most.
_MAX_MODEL_IDS = 12


class _Stopped(openai.OpenAIError):
    """A transport stop; an ``OpenAIError``, so the SDK re-raises it without retrying."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.message)
        self.stop = stop


class OpenAIClient(ClientBase):
    """An :class:`~hpo.llm.base.LLMClient` over any OpenAI-compatible Chat Completions endpoint.

    Structured output (``structured_output``, see :mod:`hpo.llm._forms`): ``json_schema``
    (``response_format`` json_schema, non-strict, so any pydantic schema is accepted),
    ``json_object`` (``{"type": "json_object", "schema": ...}`` plus the schema in the system
    text), ``tool`` (a forced function call whose parameters are the schema) or ``none`` (the
    schema in the system text only). ``auto`` starts at json_schema and steps to json_object,
    then none, each time the server rejects the current form. Replies are parsed tolerantly.

    ``timeout_s`` bounds the whole call (the SDK's retries and backoff included) and
    ``max_reply_bytes`` the bytes read per reply (see :mod:`hpo.llm._transport`).

    With ``server_tools=("web_search",)`` (OpenAI itself) a call asking for web search goes
    through the Responses API with ``tools=[{"type": "web_search"}]`` and the schema in
    ``text.format``.

    Args:
        model: Model name, e.g. ``"gpt-4o-mini"`` or ``"deepseek-chat"``.
        api_key: API key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: Endpoint (``…/v1``); ``None`` lets the SDK read ``OPENAI_BASE_URL``.
        timeout_s: Deadline of one whole call, seconds.
        max_retries: Retries the SDK makes inside the deadline (0 disables).
        temperature: Default sampling temperature; ``None`` leaves the server default.
        max_tokens: Default cap on reply tokens.
        price_in_per_mtok: Input price override, USD per million tokens.
        price_out_per_mtok: Output price override, USD per million tokens.
        structured_output: ``auto`` or a pinned form (``json_schema``, ``json_object``,
            ``tool``, ``none``).
        max_reply_bytes: Bytes read per reply before ``LLMTooLarge``.
        max_tokens_param: Request field for the cap: ``"max_tokens"`` (widely supported) or
            ``"max_completion_tokens"`` (required by OpenAI's reasoning models).
        provider: Name reported in completions and errors (a preset name such as ``"deepseek"``).
        server_tools: Server-side tools this endpoint offers (``"web_search"``: OpenAI's
            Responses API).
        api_key_env: The variable the key came from, named in an auth error's fix.
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 2,
        temperature: float | None = None,
        max_tokens: int = 2048,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
        structured_output: str = "auto",
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_tokens_param: MaxTokensParam = "max_tokens",
        provider: str = "openai",
        server_tools: Iterable[ServerTool] = (),
        api_key_env: str | None = None,
    ) -> None:
        check_client_args(
            model=model, timeout_s=timeout_s, max_retries=max_retries, max_tokens=max_tokens,
            max_reply_bytes=max_reply_bytes,
        )
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"max_tokens_param={max_tokens_param!r} is unknown: use 'max_tokens' or "
                "'max_completion_tokens'."
            )
        self.provider = provider
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = float(timeout_s)
        self.max_reply_bytes = max_reply_bytes
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.max_tokens_param = max_tokens_param
        self.structured_output = check_setting(structured_output, "openai", provider)
        self.server_tools: frozenset[str] = frozenset(server_tools)
        self._where = f"{provider} ({model})"
        self._forms = FormLadder(self.structured_output, "openai", self._where)
        self._api_key_env = api_key_env
        self._model_noted = Once()
        self._models_asked = Once()
        self._served: list[str] | None = None
        self._secret = api_key
        try:
            self._client = openai.OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=self.timeout_s,
                max_retries=max_retries,
                http_client=http_client(
                    timeout_s=self.timeout_s,
                    max_retries=max_retries,
                    max_reply_bytes=max_reply_bytes,
                    stop_error=_Stopped,
                    no_retry=self._no_retry,
                ),
            )
        except openai.OpenAIError as exc:
            raise LLMAuthError(
                f"{provider} ({model}): cannot build the client: {scrub(str(exc), (api_key,))}"
            ) from None
        if self._secret is None:
            key = getattr(self._client, "api_key", None)
            self._secret = key if isinstance(key, str) else None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(provider={self.provider!r}, model={self.model!r})"

    @property
    def base_url(self) -> str:
        """The endpoint requests go to."""
        return str(self._client.base_url)

    def _no_retry(self, status: int, body: bytes) -> bool:
        """A 5xx naming the current form is a rejection, not a transient fault."""
        return names_form(self._forms.current, body.decode("utf-8", "replace"))

    def _usage(self, tin: int, tout: int) -> Usage:
        cost = cost_usd(
            self.model,
            tin,
            tout,
            price_in_per_mtok=self.price_in_per_mtok,
            price_out_per_mtok=self.price_out_per_mtok,
        )
        return Usage(input_tokens=tin, output_tokens=tout, cost_usd=cost)

    # -- request bodies ------------------------------------------------------------------
    def _sampling(self, body: dict[str, Any], ask: Ask, sys_text: str, system_key: str) -> None:
        """Add the system text (when any) and the temperature to ``body``."""
        if sys_text and system_key:
            body[system_key] = sys_text
        temp = self.temperature if ask.temperature is None else ask.temperature
        if temp is not None:
            body["temperature"] = temp

    def _chat_body(self, form: str, ask: Ask) -> dict[str, Any]:
        spec = ask.spec
        sys_text = ask.system or ""
        extra: dict[str, Any] = {}
        if form == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": spec.name,
                    "description": spec.description,
                    "schema": spec.schema,
                    "strict": False,
                },
            }
        elif form == "json_object":
            # llama-cpp-python's server constrains its grammar with `schema`; others ignore
            # it and get the schema from the system text (json_object needs the word JSON)
            sys_text = with_hint(sys_text, schema_hint(spec.schema))
            extra["response_format"] = {"type": "json_object", "schema": spec.schema}
        elif form == "tool":
            extra["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": spec.name,
                        "description": spec.description,
                        "parameters": spec.schema,
                    },
                }
            ]
            extra["tool_choice"] = {"type": "function", "function": {"name": spec.name}}
        else:
            sys_text = with_hint(sys_text, schema_hint(spec.schema))
        chat: list[dict[str, str]] = []
        if sys_text:
            chat.append({"role": "system", "content": sys_text})
        chat.extend({"role": m.role, "content": m.content} for m in ask.messages)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            **extra,
            self.max_tokens_param: ask.max_tokens or self.max_tokens,
        }
        self._sampling(body, ask, sys_text, "")
        return body

    def _responses_body(self, form: str, ask: Ask) -> dict[str, Any]:
        spec = ask.spec
        sys_text = ask.system or ""
        body: dict[str, Any] = {
            "model": self.model,
            "input": [{"role": m.role, "content": m.content} for m in ask.messages],
            "tools": [{"type": name} for name in ask.tools],
            "max_output_tokens": ask.max_tokens or self.max_tokens,
        }
        if form == "none":
            sys_text = with_hint(sys_text, schema_hint(spec.schema))
        elif form == "json_object":
            sys_text = with_hint(sys_text, schema_hint(spec.schema))
            body["text"] = {"format": {"type": "json_object"}}
        else:  # json_schema, and tool (a forced tool would forbid searching first)
            body["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": spec.name,
                    "description": spec.description,
                    "schema": spec.schema,
                    "strict": False,
                }
            }
        self._sampling(body, ask, sys_text, "instructions")
        return body

    # -- the call ------------------------------------------------------------------------
    def _send(self, scope: CallScope, ask: Ask) -> tuple[Any, dict[str, Any], str]:
        """Send in the current form; after a rejection of that form, once per form left,
        switch and send again at once (inside the same deadline). A call with server tools
        goes through the Responses API."""
        while True:
            form = self._forms.current
            body = self._responses_body(form, ask) if ask.tools else self._chat_body(form, ask)
            try:
                if ask.tools:
                    return self._client.responses.create(**body), body, form
                return self._client.chat.completions.create(**body), body, form
            except openai.OpenAIError as exc:
                status = getattr(exc, "status_code", None)
                text = error_text(exc)
                if self._forms.rejects(form, status, text) and self._forms.switch_from(
                    form, f"HTTP {status}: {scrub(text, (self._secret,))}"
                ):
                    continue
                raise self._error(exc, scope, body, form) from safe_cause(exc, (self._secret,))
            except json.JSONDecodeError as exc:
                err = LLMMalformedReply(f"{self._where}: response body is not JSON: {exc}")
                err.request = scope.last_body or body
                raise err from None

    def _mapped(
        self, exc: openai.OpenAIError, scope: CallScope, body: dict[str, Any]
    ) -> LLMError:
        """``exc`` as an ``LLMError`` carrying the request that failed."""
        err = map_sdk_error(
            exc, openai, provider=self.provider, model=self.model, secrets=(self._secret,),
            api_key_env=self._api_key_env,
        )
        err.request = scope.last_body or body
        return err

    def _error(
        self, exc: openai.OpenAIError, scope: CallScope, body: dict[str, Any], form: str
    ) -> LLMError:
        err = self._mapped(exc, scope, body)
        if isinstance(err, LLMModelNotFound):
            return self._model_not_found(err, scope)
        return self._form_rejected(err, getattr(exc, "status_code", None), error_text(exc), form)

    def _model_not_found(self, err: LLMModelNotFound, scope: CallScope) -> LLMError:
        """Name the served models in the fix (asking ``GET {base_url}/models`` once)."""
        if self._models_asked() and scope.left() > 0.2:
            try:
                page = self._client.with_options(max_retries=0).models.list()
                self._served = [str(m.id) for m in page.data]
            except (openai.OpenAIError, ValueError, TypeError) as exc:
                logger.debug("%s: GET /models failed: %s", self._where, type(exc).__name__)
        served = self._served
        if served and self.model in served:
            wrong = LLMBadRequest(
                f"{err} (the server serves {self.model}: the endpoint itself answered 404)"
            )
            wrong.request = err.request
            wrong.fix = f"check agent.base_url (now {self.base_url}): the path is not served."
            return wrong
        if served:
            ids = ", ".join(served[:_MAX_MODEL_IDS]) + (" ..." if len(served) > _MAX_MODEL_IDS
                                                         else "")
            err.fix = f"set agent.model to a model this server serves: {ids}."
        return err

    # -- replies -------------------------------------------------------------------------
    def _reply(
        self, response: Any, reply_model: type[T], ask: Ask, latency: float,
        request: dict[str, Any], form: str,
    ) -> Completion[T]:
        if ask.tools:
            return self._from_response(response, reply_model, latency, request, form)
        return self._from_chat(response, reply_model, latency, request, form, ask.spec.name)

    def _from_chat(
        self, response: Any, reply_model: type[T], latency: float, request: dict[str, Any],
        form: str, tool_name: str,
    ) -> Completion[T]:
        if not isinstance(response, openai.types.chat.ChatCompletion):
            raise LLMMalformedReply(
                f"{self._where}: response is not a ChatCompletion: "
                f"{scrub(str(response), (self._secret,))}",
                str(response),
            )
        u = getattr(response, "usage", None)
        usage = self._usage(int(getattr(u, "prompt_tokens", 0) or 0),
                            int(getattr(u, "completion_tokens", 0) or 0))
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise LLMMalformedReply(f"{self._where}: reply has no choices", "", usage)
        choice = choices[0]
        message = choice.message
        finish = getattr(choice, "finish_reason", None)
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise LLMRefusal(f"{self._where} refused: {scrub(refusal)}")
        if finish == "content_filter":
            raise LLMRefusal(f"{self._where} refused: content filter")
        text = message.content or ""
        for call in getattr(message, "tool_calls", None) or []:
            function = getattr(call, "function", None)
            if function is not None and getattr(function, "name", None) == tool_name:
                text = str(getattr(function, "arguments", "") or "")
                break
        reply = parse_text_reply(text, reply_model, usage, truncated=finish == "length")
        return completion(self, response, reply=reply, usage=usage, raw_text=text,
                          latency=latency, extra={"finish_reason": finish}, request=request,
                          form=form, model_noted=self._model_noted)

    def _from_response(
        self, response: Any, reply_model: type[T], latency: float, request: dict[str, Any],
        form: str,
    ) -> Completion[T]:
        u = getattr(response, "usage", None)
        usage = self._usage(int(getattr(u, "input_tokens", 0) or 0),
                            int(getattr(u, "output_tokens", 0) or 0))
        texts: list[str] = []
        searches = 0
        for item in getattr(response, "output", None) or []:
            kind = getattr(item, "type", None)
            if kind == "web_search_call":
                searches += 1
            elif kind == "message":
                for part in getattr(item, "content", None) or []:
                    ptype = getattr(part, "type", None)
                    if ptype == "refusal":
                        raise LLMRefusal(
                            f"{self._where} refused: {scrub(str(getattr(part, 'refusal', '')))}"
                        )
                    if ptype == "output_text":
                        texts.append(str(getattr(part, "text", "") or ""))
        text = "".join(texts)
        details = getattr(response, "incomplete_details", None)
        truncated = getattr(details, "reason", None) == "max_output_tokens"
        reply = parse_text_reply(text, reply_model, usage, truncated=truncated)
        return completion(self, response, reply=reply, usage=usage, raw_text=text,
                          latency=latency,
                          extra={"status": getattr(response, "status", None),
                                 "web_searches": searches},
                          request=request, form=form, model_noted=self._model_noted)
