"""Anthropic Messages API client: structured replies through a forced tool call."""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic

from hpo.llm._common import (
    Ask,
    ClientBase,
    Once,
    check_client_args,
    completion,
    parse_text_reply,
    with_hint,
)
from hpo.llm._forms import FormLadder, check_setting, schema_hint
from hpo.llm._transport import DEFAULT_MAX_REPLY_BYTES, CallScope, Stop, http_client
from hpo.llm.base import (
    Completion,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMMalformedReply,
    LLMRefusal,
    T,
    Usage,
)
from hpo.llm.errors import error_text, map_sdk_error, safe_cause, scrub
from hpo.llm.parsing import validate_reply
from hpo.llm.pricing import cost_usd

__all__ = ["AnthropicClient"]

logger = logging.getLogger(__name__)

# Models known to answer 400 to a forced tool choice; others are detected on first rejection.
_NO_FORCED_TOOL: tuple[str, ...] = ("claude-sonnet-5-5", "claude-opus-5-5")

# Anthropic's server-side web search (the researcher role's ``tools=["web_search"]``).
WEB_SEARCH: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


class _Stopped(anthropic.AnthropicError):
    """A transport stop; an ``AnthropicError`` but no ``APIConnectionError``, so the SDK
    re-raises it without retrying."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.message)
        self.stop = stop


class AnthropicClient(ClientBase):
    """An :class:`~hpo.llm.base.LLMClient` over the Anthropic Messages API.

    Structured output (``structured_output``): ``tool`` (the default under ``auto``) makes the
    reply's JSON schema the ``input_schema`` of one tool the model is forced to call
    (``tool_choice={"type": "tool", ...}``); the tool call's input is the reply. ``none`` puts
    the schema in the system text and parses the text reply tolerantly; ``auto`` steps from
    tool to none when the server rejects tools. Models that reject forced tool use (Claude
    Sonnet/Opus 5.5) are asked to call the tool in words with ``tool_choice={"type": "auto"}``;
    a 400 naming ``tool_choice`` or ``temperature`` adapts this client once (still the tool
    form). ``tools=["web_search"]`` adds Anthropic's server-side web search.

    ``timeout_s`` bounds the whole call (the SDK's retries included) and ``max_reply_bytes``
    the bytes read per reply (see :mod:`hpo.llm._transport`).

    Args:
        model: Model name, e.g. ``"claude-sonnet-4-5"``.
        api_key: API key; ``None`` lets the SDK read ``ANTHROPIC_API_KEY``.
        base_url: Endpoint; ``None`` lets the SDK read ``ANTHROPIC_BASE_URL``.
        timeout_s: Deadline of one whole call, seconds.
        max_retries: Retries the SDK makes inside the deadline (0 disables).
        temperature: Default sampling temperature; ``None`` leaves the server default.
        max_tokens: Default cap on reply tokens.
        price_in_per_mtok: Input price override, USD per million tokens.
        price_out_per_mtok: Output price override, USD per million tokens.
        provider: Name reported in completions and errors (a preset name such as ``"claude"``).
        effort: ``output_config.effort`` (``"low"`` … ``"max"``) for models that think
            adaptively; ``None`` leaves the model's default.
        structured_output: ``auto``, ``tool`` or ``none``.
        max_reply_bytes: Bytes read per reply before ``LLMTooLarge``.
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
        provider: str = "anthropic",
        effort: str | None = None,
        structured_output: str = "auto",
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        api_key_env: str | None = None,
    ) -> None:
        check_client_args(
            model=model, timeout_s=timeout_s, max_retries=max_retries, max_tokens=max_tokens,
            max_reply_bytes=max_reply_bytes,
        )
        self.provider = provider
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = float(timeout_s)
        self.max_reply_bytes = max_reply_bytes
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.effort = effort
        self.structured_output = check_setting(structured_output, "anthropic", provider)
        self.server_tools: frozenset[str] = frozenset({"web_search"})
        self._where = f"{provider} ({model})"
        self._forms = FormLadder(self.structured_output, "anthropic", self._where)
        self._force_tool = not model.startswith(_NO_FORCED_TOOL)
        self._send_temperature = True
        self._api_key_env = api_key_env
        self._model_noted = Once()
        self._secret = api_key
        try:
            self._client = anthropic.Anthropic(
                api_key=api_key,
                base_url=base_url,
                timeout=self.timeout_s,
                max_retries=max_retries,
                http_client=http_client(
                    timeout_s=self.timeout_s,
                    max_retries=max_retries,
                    max_reply_bytes=max_reply_bytes,
                    stop_error=_Stopped,
                ),
            )
        except anthropic.AnthropicError as exc:
            raise LLMAuthError(
                f"{provider} ({model}): cannot build the client: {scrub(str(exc), (api_key,))}"
            ) from None
        if self._secret is None:
            self._secret = self._client.api_key

    def __repr__(self) -> str:  # never show the key
        return f"AnthropicClient(provider={self.provider!r}, model={self.model!r})"

    def _usage(self, response: Any) -> Usage:
        u = getattr(response, "usage", None)
        tin = int(getattr(u, "input_tokens", 0) or 0)
        tin += int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        tin += int(getattr(u, "cache_read_input_tokens", 0) or 0)
        tout = int(getattr(u, "output_tokens", 0) or 0)
        cost = cost_usd(
            self.model,
            tin,
            tout,
            price_in_per_mtok=self.price_in_per_mtok,
            price_out_per_mtok=self.price_out_per_mtok,
        )
        return Usage(input_tokens=tin, output_tokens=tout, cost_usd=cost)

    def _body(self, form: str, ask: Ask) -> dict[str, Any]:
        spec = ask.spec
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": ask.max_tokens or self.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in ask.messages],
        }
        server = [dict(WEB_SEARCH) for name in ask.tools if name == "web_search"]
        sys_text = ask.system or ""
        if form == "none":
            sys_text = with_hint(sys_text, schema_hint(spec.schema))
            if server:
                body["tools"] = server
        else:
            reply_tool = {
                "name": spec.name,
                "description": spec.description,
                "input_schema": spec.schema,
            }
            body["tools"] = [*server, reply_tool]
            if server:
                # the model must be free to search before it answers: no forced tool choice
                body["tool_choice"] = {"type": "auto"}
                sys_text = with_hint(
                    sys_text,
                    f"When you are done searching, answer by calling the tool `{spec.name}` "
                    "once.",
                )
            elif self._force_tool:
                body["tool_choice"] = {"type": "tool", "name": spec.name}
            else:
                # models that reject a forced tool choice get asked in words instead
                body["tool_choice"] = {"type": "auto"}
                sys_text = with_hint(
                    sys_text, f"Answer by calling the tool `{spec.name}` exactly once."
                )
        if sys_text:
            body["system"] = sys_text
        temp = self.temperature if ask.temperature is None else ask.temperature
        if temp is not None and self._send_temperature:
            # This SDK version no longer lists `temperature`; older models still accept it.
            body["extra_body"] = {"temperature": temp}
        if self.effort is not None:
            body["output_config"] = {"effort": self.effort}
        return body

    def _wire(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON body the SDK sends for ``create(**body)`` (``extra_body`` merged in)."""
        wire = {k: v for k, v in body.items() if k != "extra_body"}
        wire.update(body.get("extra_body") or {})
        return wire

    def _adapt(self, exc: anthropic.BadRequestError, form: str) -> bool:
        """Drop a setting the model rejects (forced tool choice, temperature); True if dropped.

        Newer Claude models answer 400 to a forced ``tool_choice`` and to sampling parameters.
        This adapts once per client inside the tool form; it is not a retry of transient
        errors (the SDK does those).
        """
        text = error_text(exc).lower()
        if form == "tool" and self._force_tool and "tool_choice" in text:
            self._force_tool = False
            logger.warning(
                "%s rejects a forced tool choice: asking for the tool call in words instead",
                self._where,
            )
            return True
        if self._send_temperature and self.temperature is not None and "temperature" in text:
            self._send_temperature = False
            logger.warning("%s rejects temperature: sending requests without it", self._where)
            return True
        return False

    def _send(self, scope: CallScope, ask: Ask) -> tuple[Any, dict[str, Any], str]:
        """Send in the current form; adapt once to a rejected forced tool choice or
        temperature, switch once past a rejected form, and send again at once (inside the
        same deadline). Errors are never retried here (the SDK does that)."""
        secrets = (self._secret,)
        for _attempt in range(4):  # at most two adaptations and one form switch
            form = self._forms.current
            body = self._body(form, ask)
            try:
                return self._client.messages.create(**body), body, form
            except anthropic.BadRequestError as exc:
                if self._adapt(exc, form):
                    continue
                text = error_text(exc)
                if self._forms.rejects(form, exc.status_code, text) and self._forms.switch_from(
                    form, f"HTTP {exc.status_code}: {scrub(text, secrets)}"
                ):
                    continue
                raise self._error(exc, scope, body, form) from safe_cause(exc, secrets)
            except anthropic.AnthropicError as exc:
                raise self._error(exc, scope, body, form) from safe_cause(exc, secrets)
            except json.JSONDecodeError as exc:
                bad = LLMMalformedReply(f"{self._where}: response body is not JSON: {exc}")
                bad.request = scope.last_body or self._wire(body)
                raise bad from None
        err = LLMBadRequest(f"{self._where}: the server kept rejecting the request")
        err.request = scope.last_body
        err.fix = "set agent.structured_output=none."
        raise err

    def _error(
        self, exc: anthropic.AnthropicError, scope: CallScope, body: dict[str, Any], form: str
    ) -> LLMError:
        err = map_sdk_error(
            exc, anthropic, provider=self.provider, model=self.model, secrets=(self._secret,),
            api_key_env=self._api_key_env,
        )
        err.request = scope.last_body or self._wire(body)
        return self._form_rejected(err, getattr(exc, "status_code", None), error_text(exc), form)

    def _reply(
        self, response: Any, reply_model: type[T], ask: Ask, latency: float,
        request: dict[str, Any], form: str,
    ) -> Completion[T]:
        if not isinstance(response, anthropic.types.Message):
            raise LLMMalformedReply(
                f"{self._where}: response is not a Message: "
                f"{scrub(str(response), (self._secret,))}",
                str(response),
            )
        usage = self._usage(response)
        tool_input: object | None = None
        texts: list[str] = []
        searches = 0
        for block in response.content or []:
            btype = getattr(block, "type", None)
            if btype == "tool_use" and tool_input is None:
                tool_input = getattr(block, "input", None)
            elif btype == "server_tool_use":
                searches += 1
            elif btype == "text":
                texts.append(getattr(block, "text", "") or "")
        text = "\n".join(texts)
        stop = getattr(response, "stop_reason", None)
        if stop == "refusal":
            details = getattr(response, "stop_details", None)
            why = getattr(details, "explanation", None) or text or "no explanation given"
            raise LLMRefusal(f"{self._where} refused: {scrub(why)}")

        if tool_input is not None:
            raw = json.dumps(tool_input, ensure_ascii=False)
            reply = validate_reply(tool_input, reply_model, raw_text=raw, usage=usage)
        else:
            raw = text
            reply = parse_text_reply(text, reply_model, usage, truncated=stop == "max_tokens")
        return completion(self, response, reply=reply, usage=usage, raw_text=raw,
                          latency=latency, extra={"stop_reason": stop, "web_searches": searches},
                          request=request, form=form, model_noted=self._model_noted)

