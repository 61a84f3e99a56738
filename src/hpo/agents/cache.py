"""A reply cache around any LLM client: the same request is answered from disk, for free.

The key is the SHA-256 of (provider, model, system, messages, the JSON schema sent, the
structured-output setting, the server tools, temperature). Each entry is one JSON file holding
the reply (as validated JSON), the raw reply text and the request that was sent; no secret is
ever part of a key or an entry. A corrupt entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpo.llm.base import Completion, LLMClient, Message, ServerTool, T, Usage

__all__ = ["CachingClient", "cache_key"]

logger = logging.getLogger(__name__)


def cache_key(
    *,
    provider: str,
    model: str,
    system: str | None,
    messages: list[Message],
    schema: dict[str, Any],
    temperature: float | None,
    structured_output: str = "",
    tools: Sequence[str] = (),
) -> str:
    """The hex SHA-256 naming one request.

    Args:
        structured_output: The client's ``agent.structured_output`` setting (``auto`` keys
            the same whichever form a server made it settle on).
        tools: Provider-neutral server tool names (``web_search``), in any order.
    """
    payload = {
        "provider": provider,
        "model": model,
        "system": system or "",
        "messages": [[m.role, m.content] for m in messages],
        "schema": schema,
        "temperature": temperature,
        "structured_output": structured_output,
        "tools": sorted(set(tools)),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CachingClient:
    """An :class:`~hpo.llm.base.LLMClient` that answers repeated requests from ``cache_dir``.

    A hit returns a :class:`~hpo.llm.base.Completion` with ``cached=True``, zero usage and zero
    latency, and makes no request. Errors are never cached. Server tools (web search) are
    passed on to the inner client, and ``server_tools`` is the inner client's.

    Args:
        inner: The client that answers misses.
        cache_dir: Directory of the entries (created on first write).
    """

    def __init__(self, inner: LLMClient, cache_dir: str | os.PathLike[str]) -> None:
        if isinstance(inner, CachingClient):
            inner = inner.inner
        self.inner: LLMClient = inner
        self.provider: str = inner.provider
        self.model: str = inner.model
        self.server_tools: frozenset[str] = frozenset(getattr(inner, "server_tools", ()))
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CachingClient({self.inner!r}, cache_dir={str(self.cache_dir)!r})"

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

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
        """Answer from the cache, or ask the inner client and store its reply."""
        temp = temperature if temperature is not None else getattr(self.inner, "temperature", None)
        names = [str(t.get("name", "")) if isinstance(t, Mapping) else str(t)
                 for t in tools or ()]
        key = cache_key(
            provider=self.provider,
            model=self.model,
            system=system,
            messages=messages,
            schema=schema if schema is not None else reply_model.model_json_schema(),
            temperature=temp,
            structured_output=str(getattr(self.inner, "structured_output", "")),
            tools=names,
        )
        path = self._path(key)
        hit = self._read(path, reply_model)
        if hit is not None:
            with self._lock:
                self.hits += 1
            logger.debug("LLM cache hit %s (%s)", key[:12], reply_model.__name__)
            return hit
        with self._lock:
            self.misses += 1
        completion = self.inner.complete(
            messages, reply_model, system=system, temperature=temperature,
            max_tokens=max_tokens, schema=schema, tools=tools,
        )
        self._write(path, completion)
        return completion

    def _read(self, path: Path, reply_model: type[T]) -> Completion[T] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("LLM cache entry %s is unreadable (%s): asking again", path, exc)
            return None
        try:
            reply = reply_model.model_validate(data["reply"])
        except (KeyError, TypeError, ValidationError) as exc:
            logger.warning("LLM cache entry %s does not fit %s (%s): asking again",
                           path, reply_model.__name__, type(exc).__name__)
            return None
        return Completion(
            reply=reply,
            usage=Usage(),
            raw_text=str(data.get("raw_text", "")),
            latency_s=0.0,
            model=str(data.get("model", self.model)),
            provider=str(data.get("provider", self.provider)),
            cached=True,
            extra={"cache_key": path.stem},
            requested_model=str(data.get("requested_model", self.model)),
            request=request if isinstance(request := data.get("request"), dict) else {},
            structured_output=str(data.get("structured_output", "")),
        )

    def _write(self, path: Path, completion: Completion[Any]) -> None:
        from hpo.secrets import redact_obj

        entry = {
            "provider": completion.provider,
            "model": completion.model,
            "requested_model": completion.requested_model,
            "structured_output": completion.structured_output,
            "request": completion.request,
            "created": time.time(),
            "raw_text": completion.raw_text,
            "reply": completion.reply.model_dump(mode="json"),
            "usage": {
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
                "cost_usd": completion.usage.cost_usd,
            },
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(redact_obj(entry), fh, ensure_ascii=False, indent=1)
            os.replace(tmp, path)
        except OSError as exc:  # a cache that cannot write must not fail the sweep
            logger.warning("LLM cache cannot write %s: %s", path, exc)
