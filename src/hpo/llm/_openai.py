"""OpenAI-compatible Chat Completions: OpenAI, DeepSeek, Gemini, OpenRouter, vLLM, Ollama."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import openai

from hpo.llm._common import (
    check_client_args,
    check_messages,
    completion,
    parse_text_reply,
    schema_description,
    schema_name,
)
from hpo.llm.base import Completion, LLMAuthError, LLMMalformedReply, LLMRefusal, Message, T, Usage
from hpo.llm.errors import map_sdk_error, safe_cause, scrub
from hpo.llm.pricing import cost_usd

__all__ = ["OpenAIClient"]

logger = logging.getLogger(__name__)

MaxTokensParam = Literal["max_tokens", "max_completion_tokens"]


class OpenAIClient:
    """An :class:`~hpo.llm.base.LLMClient` over any OpenAI-compatible Chat Completions endpoint.

    Structured output uses ``response_format={"type": "json_schema", ...}`` (non-strict, so any
    pydantic schema is accepted); ``json_mode=True`` sends ``{"type": "json_object"}`` instead,
    for servers without json_schema support, and puts the schema in the system prompt. Replies
    are parsed tolerantly (prose, fences). Retries and timeouts are the SDK's own.

    Args:
        model: Model name, e.g. ``"gpt-4o-mini"`` or ``"deepseek-chat"``.
        api_key: API key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: Endpoint (``…/v1``); ``None`` lets the SDK read ``OPENAI_BASE_URL``.
        timeout_s: Timeout of one HTTP attempt, seconds.
        max_retries: Retries the SDK makes after the first attempt (0 disables).
        temperature: Default sampling temperature; ``None`` leaves the server default.
        max_tokens: Default cap on reply tokens.
        price_in_per_mtok: Input price override, USD per million tokens.
        price_out_per_mtok: Output price override, USD per million tokens.
        json_mode: Use ``json_object`` instead of ``json_schema`` response format.
        max_tokens_param: Request field for the cap: ``"max_tokens"`` (widely supported) or
            ``"max_completion_tokens"`` (required by OpenAI's reasoning models).
        provider: Name reported in completions and errors (a preset name such as ``"deepseek"``).
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
        json_mode: bool = False,
        max_tokens_param: MaxTokensParam = "max_tokens",
        provider: str = "openai",
    ) -> None:
        check_client_args(
            model=model, timeout_s=timeout_s, max_retries=max_retries, max_tokens=max_tokens
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
        self.price_in_per_mtok = price_in_per_mtok
        self.price_out_per_mtok = price_out_per_mtok
        self.json_mode = json_mode
        self.max_tokens_param = max_tokens_param
        self._secret = api_key
        try:
            self._client = openai.OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=float(timeout_s),
                max_retries=max_retries,
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

    def _usage(self, response: Any) -> Usage:
        u = getattr(response, "usage", None)
        tin = int(getattr(u, "prompt_tokens", 0) or 0)
        tout = int(getattr(u, "completion_tokens", 0) or 0)
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
        system: str | None,
        temperature: float | None,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        schema = reply_model.model_json_schema()
        sys_text = system or ""
        if self.json_mode:
            # json_object mode needs the word "JSON" in the prompt and gets no schema otherwise.
            hint = "Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(
                schema, separators=(",", ":")
            )
            sys_text = f"{sys_text}\n\n{hint}" if sys_text else hint
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema_name(reply_model),
                    "description": schema_description(reply_model),
                    "schema": schema,
                    "strict": False,
                },
            }
        chat: list[dict[str, str]] = []
        if sys_text:
            chat.append({"role": "system", "content": sys_text})
        chat.extend({"role": m.role, "content": m.content} for m in messages)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "response_format": response_format,
            self.max_tokens_param: max_tokens or self.max_tokens,
        }
        temp = self.temperature if temperature is None else temperature
        if temp is not None:
            kwargs["temperature"] = temp
        return kwargs

    def complete(
        self,
        messages: list[Message],
        reply_model: type[T],
        *,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion[T]:
        """Ask the model and return its reply parsed into ``reply_model``.

        Raises:
            LLMError: A subclass naming what failed (timeout, rate limit, server, auth,
                connection, malformed reply, refusal).
        """
        check_messages(messages)
        kwargs = self._request(messages, reply_model, system, temperature, max_tokens)
        start = time.perf_counter()
        secrets = (self._secret,)
        try:
            response = self._client.chat.completions.create(**kwargs)
        except openai.OpenAIError as exc:
            err = map_sdk_error(
                exc, openai, provider=self.provider, model=self.model, secrets=secrets
            )
            raise err from safe_cause(exc, secrets)
        except json.JSONDecodeError as exc:
            raise LLMMalformedReply(
                f"{self.provider} ({self.model}): response body is not JSON: {exc}"
            ) from None
        if not isinstance(response, openai.types.chat.ChatCompletion):
            raise LLMMalformedReply(
                f"{self.provider} ({self.model}): response is not a ChatCompletion: "
                f"{scrub(str(response), secrets)}",
                str(response),
            )
        latency = time.perf_counter() - start
        usage = self._usage(response)

        choices = getattr(response, "choices", None) or []
        if not choices:
            raise LLMMalformedReply(
                f"{self.provider} ({self.model}): reply has no choices", "", usage
            )
        choice = choices[0]
        message = choice.message
        finish = getattr(choice, "finish_reason", None)
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise LLMRefusal(f"{self.provider} ({self.model}) refused: {scrub(refusal)}")
        if finish == "content_filter":
            raise LLMRefusal(f"{self.provider} ({self.model}) refused: content filter")
        text = message.content or ""
        reply = parse_text_reply(text, reply_model, usage, truncated=finish == "length")
        return completion(self, response, reply=reply, usage=usage, raw_text=text,
                          latency=latency, extra={"finish_reason": finish})
