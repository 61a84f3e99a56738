"""Gemini: OpenAI-compatible Chat Completions, and Gemini's native ``generateContent`` with
Google Search grounding for web search."""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from types import SimpleNamespace
from typing import Any

import openai

from hpo.llm._common import Ask, completion, parse_text_reply, with_hint
from hpo.llm._forms import schema_hint
from hpo.llm._openai import OpenAIClient
from hpo.llm._transport import CallScope
from hpo.llm.base import Completion, LLMError, LLMMalformedReply, LLMModelNotFound, LLMRefusal, T
from hpo.llm.errors import safe_cause, scrub

__all__ = ["GEMINI_NATIVE_BASE_URL", "NATIVE_BASE_URL_ENV", "GeminiClient"]

logger = logging.getLogger(__name__)

GEMINI_NATIVE_BASE_URL = "https://generativelanguage.googleapis.com"
NATIVE_BASE_URL_ENV = "HPO_GEMINI_NATIVE_BASE_URL"

# finishReason values saying the model would not answer (not a cut or a normal stop).
_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                      "IMAGE_SAFETY"})


class GeminiClient(OpenAIClient):
    """An :class:`OpenAIClient` for Gemini's OpenAI-compatible endpoint that searches the web.

    Calls without server tools go to Chat Completions (``base_url``). A call asking for
    ``web_search`` goes to Gemini's native API instead: ``POST {native_base_url}/v1beta/models/
    {model}:generateContent`` with ``tools: [{"google_search": {}}]``, the key in
    ``x-goog-api-key``. Gemini refuses a response schema beside the search tool on many
    models, so the schema rides in the system instruction and the reply text is parsed
    tolerantly (structured output ``none``). The request goes through the same SDK client, so
    the whole-call deadline, the reply size cap, retries and error mapping are the ones of
    every other call. The reply's ``groundingMetadata`` gives ``extra["web_searches"]`` (the
    queries run) and ``extra["web_sources"]`` (``[{"uri", "title"}]``).

    Args:
        native_base_url: Root of the native API; ``None`` reads ``HPO_GEMINI_NATIVE_BASE_URL``,
            else :data:`GEMINI_NATIVE_BASE_URL`.
        **kwargs: As :class:`OpenAIClient` (``server_tools`` is fixed to ``web_search``).
    """

    def __init__(self, *, native_base_url: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("provider", "gemini")
        kwargs["server_tools"] = ("web_search",)
        super().__init__(**kwargs)
        url = native_base_url or os.environ.get(NATIVE_BASE_URL_ENV, "").strip()
        self.native_base_url = (url or GEMINI_NATIVE_BASE_URL).rstrip("/")

    def __repr__(self) -> str:  # never show the key
        return f"GeminiClient(provider={self.provider!r}, model={self.model!r})"

    @property
    def native_url(self) -> str:
        """Where web-search calls go."""
        model = urllib.parse.quote(self.model.removeprefix("models/"), safe="-._~")
        return f"{self.native_base_url}/v1beta/models/{model}:generateContent"

    # -- the call ------------------------------------------------------------------------
    def _native_body(self, ask: Ask) -> dict[str, Any]:
        system = with_hint(ask.system, schema_hint(ask.spec.schema))
        config: dict[str, Any] = {"maxOutputTokens": ask.max_tokens or self.max_tokens}
        temp = self.temperature if ask.temperature is None else ask.temperature
        if temp is not None:
            config["temperature"] = temp
        return {
            "contents": [
                {"role": "user" if m.role == "user" else "model", "parts": [{"text": m.content}]}
                for m in ask.messages
            ],
            "systemInstruction": {"parts": [{"text": system}]},
            "generationConfig": config,
            "tools": [{"google_search": {}} for name in ask.tools if name == "web_search"],
        }

    def _send(self, scope: CallScope, ask: Ask) -> tuple[Any, dict[str, Any], str]:
        if not ask.tools:
            return super()._send(scope, ask)
        body = self._native_body(ask)
        # the key goes in x-goog-api-key; no Bearer header (Google reads that as OAuth)
        headers: dict[str, str | openai.Omit] = {
            "Authorization": openai.Omit(), "x-goog-api-key": self._secret or "",
        }
        try:
            response = self._client.post(self.native_url, cast_to=object, body=body,
                                         options={"headers": headers})
        except openai.OpenAIError as exc:
            raise self._native_error(exc, scope, body) from safe_cause(exc, (self._secret,))
        except json.JSONDecodeError as exc:
            err = LLMMalformedReply(f"{self._where}: response body is not JSON: {exc}")
            err.request = scope.last_body or body
            raise err from None
        return response, body, "none"

    def _native_error(
        self, exc: openai.OpenAIError, scope: CallScope, body: dict[str, Any]
    ) -> LLMError:
        err = self._mapped(exc, scope, body)
        if isinstance(err, LLMModelNotFound):
            err.fix = (
                f"set agent.model to a Gemini model with Google Search grounding, or check "
                f"{NATIVE_BASE_URL_ENV} (now {self.native_base_url})."
            )
        return err

    # -- replies -------------------------------------------------------------------------
    def _reply(
        self, response: Any, reply_model: type[T], ask: Ask, latency: float,
        request: dict[str, Any], form: str,
    ) -> Completion[T]:
        if not ask.tools:
            return super()._reply(response, reply_model, ask, latency, request, form)
        if not isinstance(response, dict):
            raise LLMMalformedReply(
                f"{self._where}: generateContent reply is not a JSON object: "
                f"{scrub(str(response), (self._secret,))}",
                str(response),
            )
        meta = response.get("usageMetadata") or {}
        usage = self._usage(int(meta.get("promptTokenCount") or 0),
                            int(meta.get("candidatesTokenCount") or 0))
        candidates = response.get("candidates") or []
        if not candidates:
            blocked = (response.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise LLMRefusal(f"{self._where} refused: prompt blocked ({scrub(blocked)})")
            raise LLMMalformedReply(f"{self._where}: reply has no candidates", "", usage)
        first = candidates[0] if isinstance(candidates[0], dict) else {}
        finish = first.get("finishReason")
        parts = (first.get("content") or {}).get("parts") or []
        text = "".join(str(p.get("text") or "") for p in parts
                       if isinstance(p, dict) and not p.get("thought"))
        if finish in _BLOCKED:
            raise LLMRefusal(f"{self._where} refused: finishReason {finish}")
        grounding = first.get("groundingMetadata") or {}
        sources = [
            {"uri": str(web.get("uri") or ""), "title": str(web.get("title") or "")}
            for chunk in grounding.get("groundingChunks") or [] if isinstance(chunk, dict)
            for web in [chunk.get("web") or {}] if web.get("uri")
        ]
        reply = parse_text_reply(text, reply_model, usage, truncated=finish == "MAX_TOKENS")
        answered = SimpleNamespace(model=response.get("modelVersion") or self.model,
                                   id=response.get("responseId"))
        return completion(self, answered, reply=reply, usage=usage, raw_text=text,
                          latency=latency,
                          extra={"finish_reason": finish,
                                 "web_searches": len(grounding.get("webSearchQueries") or []),
                                 "web_sources": sources},
                          request=request, form=form, model_noted=self._model_noted)
