"""Anthropic Messages API client: structured replies through a forced tool call."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anthropic

from hpo.llm._common import (
    check_client_args,
    check_messages,
    completion,
    parse_text_reply,
    schema_description,
    schema_name,
)
from hpo.llm.base import (
    Completion,
    LLMAuthError,
    LLMMalformedReply,
    LLMRefusal,
    Message,
    T,
    Usage,
)
from hpo.llm.errors import map_sdk_error, safe_cause, scrub
from hpo.llm.parsing import validate_reply
from hpo.llm.pricing import cost_usd

__all__ = ["AnthropicClient"]

logger = logging.getLogger(__name__)

# Models known to answer 400 to a forced tool choice; others are detected on first rejection.
_NO_FORCED_TOOL: tuple[str, ...] = ("claude-sonnet-5-5", "claude-opus-5-5")


class AnthropicClient:
    """An :class:`~hpo.llm.base.LLMClient` over the Anthropic Messages API.

    The reply model's JSON schema becomes the ``input_schema`` of one tool the model is forced
    to call (``tool_choice={"type": "tool", ...}``); the tool call's input is the reply. Models
    that reject forced tool use (Claude Sonnet/Opus 5.5) are asked to call it in words with
    ``tool_choice={"type": "auto"}``; a 400 naming ``tool_choice`` or ``temperature`` switches
    this client over once. A plain-text answer is parsed tolerantly. Retries (429/5xx/
    connection, honouring ``retry-after``) and timeouts are the SDK's own.

    Args:
        model: Model name, e.g. ``"claude-sonnet-4-5"``.
        api_key: API key; ``None`` lets the SDK read ``ANTHROPIC_API_KEY``.
        base_url: Endpoint; ``None`` lets the SDK read ``ANTHROPIC_BASE_URL``.
        timeout_s: Timeout of one HTTP attempt, seconds.
        max_retries: Retries the SDK makes after the first attempt (0 disables).
        temperature: Default sampling temperature; ``None`` leaves the server default.
        max_tokens: Default cap on reply tokens.
        price_in_per_mtok: Input price override, USD per million tokens.
        price_out_per_mtok: Output price override, USD per million tokens.
        provider: Name reported in completions and errors (a preset name such as ``"claude"``).
        effort: ``output_config.effort`` (``"low"`` … ``"max"``) for models that think
            adaptively; ``None`` leaves the model's default.
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
    ) -> None:
        check_client_args(
            model=model, timeout_s=timeout_s, max_retries=max_retries, max_tokens=max_tokens
        )
        self.provider = provider
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.effort = effort
        self._force_tool = not model.startswith(_NO_FORCED_TOOL)
        self._send_temperature = True
        self._secret = api_key
        try:
            self._client = anthropic.Anthropic(
                api_key=api_key,
                base_url=base_url,
                timeout=float(timeout_s),
                max_retries=max_retries,
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

    def _request(
        self,
        messages: list[Message],
        reply_model: type[T],
        tool: str,
        system: str | None,
        temperature: float | None,
        max_tokens: int | None,
        server_tools: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens or self.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "tools": [
                {
                    "name": tool,
                    "description": schema_description(reply_model),
                    "input_schema": reply_model.model_json_schema(),
                }
            ],
        }
        sys_text = system or ""
        if server_tools:
            # the model must be free to search before it answers: no forced tool choice
            kwargs["tools"] = [*server_tools, *kwargs["tools"]]
            kwargs["tool_choice"] = {"type": "auto"}
            hint = f"When you are done searching, answer by calling the tool `{tool}` once."
            sys_text = f"{sys_text}\n\n{hint}" if sys_text else hint
        elif self._force_tool:
            kwargs["tool_choice"] = {"type": "tool", "name": tool}
        else:
            # Models that reject a forced tool choice get asked in words instead.
            kwargs["tool_choice"] = {"type": "auto"}
            hint = f"Answer by calling the tool `{tool}` exactly once."
            sys_text = f"{sys_text}\n\n{hint}" if sys_text else hint
        if sys_text:
            kwargs["system"] = sys_text
        temp = self.temperature if temperature is None else temperature
        if temp is not None and self._send_temperature:
            # This SDK version no longer lists `temperature`; older models still accept it.
            kwargs["extra_body"] = {"temperature": temp}
        if self.effort is not None:
            kwargs["output_config"] = {"effort": self.effort}
        return kwargs

    def _fall_back(self, exc: anthropic.BadRequestError) -> bool:
        """Drop a setting the model rejects (forced tool choice, temperature); True if dropped.

        Newer Claude models answer 400 to a forced ``tool_choice`` and to sampling parameters.
        This adapts once per client; it is not a retry of transient errors (the SDK does those).
        """
        text = f"{exc} {getattr(exc, 'body', '')}".lower()
        if self._force_tool and "tool_choice" in text:
            self._force_tool = False
            logger.warning(
                "%s (%s) rejects a forced tool choice: asking for the tool call in words instead",
                self.provider,
                self.model,
            )
            return True
        if self._send_temperature and self.temperature is not None and "temperature" in text:
            self._send_temperature = False
            logger.warning(
                "%s (%s) rejects temperature: sending requests without it",
                self.provider,
                self.model,
            )
            return True
        return False

    def complete(
        self,
        messages: list[Message],
        reply_model: type[T],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion[T]:
        """Ask the model and return its reply parsed into ``reply_model``.

        ``tools``: Anthropic server tools the model may use first, e.g. the built-in web search
        ``{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}`` (the
        researcher role). The reply still comes through the structured-output tool.

        Raises:
            LLMError: A subclass naming what failed (timeout, rate limit, server, auth,
                connection, malformed reply, refusal).
        """
        check_messages(messages)
        tool = schema_name(reply_model)
        start = time.perf_counter()
        secrets = (self._secret,)
        for _attempt in range(3):  # at most two capability fallbacks, never a retry of errors
            kwargs = self._request(messages, reply_model, tool, system, temperature, max_tokens,
                                   tools)
            try:
                response = self._client.messages.create(**kwargs)
                break
            except anthropic.BadRequestError as exc:
                if not self._fall_back(exc):
                    raise map_sdk_error(
                        exc, anthropic, provider=self.provider, model=self.model, secrets=secrets
                    ) from safe_cause(exc, secrets)
            except anthropic.AnthropicError as exc:
                err = map_sdk_error(
                    exc, anthropic, provider=self.provider, model=self.model, secrets=secrets
                )
                raise err from safe_cause(exc, secrets)
            except json.JSONDecodeError as exc:
                raise LLMMalformedReply(
                    f"{self.provider} ({self.model}): response body is not JSON: {exc}"
                ) from None
        if not isinstance(response, anthropic.types.Message):
            raise LLMMalformedReply(
                f"{self.provider} ({self.model}): response is not a Message: "
                f"{scrub(str(response), secrets)}",
                str(response),
            )
        latency = time.perf_counter() - start
        usage = self._usage(response)

        tool_input: object | None = None
        texts: list[str] = []
        for block in response.content or []:
            btype = getattr(block, "type", None)
            if btype == "tool_use" and tool_input is None:
                tool_input = getattr(block, "input", None)
            elif btype == "text":
                texts.append(getattr(block, "text", "") or "")
        text = "\n".join(texts)
        stop = getattr(response, "stop_reason", None)
        if stop == "refusal":
            details = getattr(response, "stop_details", None)
            why = getattr(details, "explanation", None) or text or "no explanation given"
            raise LLMRefusal(f"{self.provider} ({self.model}) refused: {scrub(why)}")

        if tool_input is not None:
            raw = json.dumps(tool_input, ensure_ascii=False)
            reply = validate_reply(tool_input, reply_model, raw_text=raw, usage=usage)
        else:
            raw = text
            reply = parse_text_reply(text, reply_model, usage, truncated=stop == "max_tokens")
        return completion(self, response, reply=reply, usage=usage, raw_text=raw,
                          latency=latency, extra={"stop_reason": stop})
