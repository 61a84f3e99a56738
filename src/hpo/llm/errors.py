"""Map the SDKs' exceptions to ours, in one place. Messages never contain the API key."""

from __future__ import annotations

import logging
import re
from types import ModuleType

from hpo.llm._transport import Stop
from hpo.llm.base import (
    LLMAuthError,
    LLMBadRequest,
    LLMConnectionError,
    LLMError,
    LLMModelNotFound,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    LLMTooLarge,
)

__all__ = ["error_text", "map_sdk_error", "safe_cause", "scrub"]

logger = logging.getLogger(__name__)

_MAX_DETAIL = 240


def scrub(text: str, secrets: list[str | None] | tuple[str | None, ...] = ()) -> str:
    """Return ``text`` on one line, shortened, with every secret replaced by ``***``.

    Args:
        text: Any message that may reach a log or an exception.
        secrets: Values that must never appear (API keys); empty or short values are ignored.
    """
    out = " ".join(str(text).split())
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    if len(out) > _MAX_DETAIL:
        out = out[: _MAX_DETAIL - 3] + "..."
    return out


# A 4xx body saying the model is unknown (OpenAI, vLLM, Ollama, Anthropic, OpenRouter wording).
_MODEL_MISSING = re.compile(
    r"model_not_found|unknown model|no such model|invalid model|"
    r"model\b[^.]{0,120}\b(does not exist|not found|not exist|is not available|not supported)",
    re.IGNORECASE,
)
# Request fields a 400 names, and the config key that changes them.
_BAD_REQUEST_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("max_tokens", "max_completion_tokens", "max_output_tokens"), "agent.max_tokens"),
    (("context length", "context_length", "too long", "maximum context", "too many tokens"),
     "agent.history (fewer trials shown) or agent.model (a longer context)"),
    (("temperature",), "agent.temperature"),
    (("response_format", "json_schema", "json_object", "tool"), "agent.structured_output"),
)


def error_text(exc: BaseException) -> str:
    """The SDK exception's message and body as one string (for keyword checks)."""
    return f"{exc} {getattr(exc, 'body', '') or ''}"


def _bad_request_fix(detail: str) -> str:
    low = detail.lower()
    for words, key in _BAD_REQUEST_KEYS:
        if any(w in low for w in words):
            return f"the server rejects the request: change {key}."
    return "the server rejects the request: check agent.model and agent.base_url."


def _detail(exc: BaseException) -> str:
    # Prefer the server's own sentence (`{"error": {"message": ...}}`) over the SDK's wrapper.
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def map_sdk_error(
    exc: BaseException,
    sdk: ModuleType,
    *,
    provider: str,
    model: str,
    secrets: tuple[str | None, ...] = (),
    api_key_env: str | None = None,
) -> LLMError:
    """Translate an ``anthropic``/``openai`` SDK exception into an :class:`LLMError`.

    Both SDKs share the same exception names at top level, so ``sdk`` is the SDK module.
    Permanent errors get a ``fix``: auth (401/403), an unknown model (404, or a 4xx body
    saying so), any other rejected request (400/413/422). A transport :class:`Stop` (deadline,
    size cap, no time for a retry) carries its own message and fix.

    Args:
        exc: The exception the SDK raised (after its own retries).
        sdk: The ``anthropic`` or ``openai`` module.
        provider: Provider name for the message (e.g. ``"deepseek"``).
        model: Model name for the message.
        secrets: Values to scrub from the message (the API key).
        api_key_env: The variable holding the key, named in an auth error's fix.

    Returns:
        The matching ``LLMError`` subclass instance; the caller raises it ``from exc``.
    """
    where = f"{provider} ({model})"
    stop = getattr(exc, "stop", None)
    if isinstance(stop, Stop):
        cls = {"deadline": LLMTimeout, "too_large": LLMTooLarge}.get(stop.kind, LLMConnectionError)
        stopped = cls(f"{where}: {stop.message}")
        stopped.fix = stop.fix
        return stopped
    detail = scrub(_detail(exc), secrets)
    status = getattr(exc, "status_code", None)
    http = f" [HTTP {status}]" if status is not None else ""

    err: LLMError
    if isinstance(exc, sdk.APITimeoutError):
        err = LLMTimeout(f"{where}: request timed out: {detail}")
    elif isinstance(exc, sdk.APIConnectionError):
        err = LLMConnectionError(f"{where}: cannot connect: {detail}")
    elif isinstance(exc, sdk.RateLimitError):
        err = LLMRateLimited(f"{where}: rate limited{http}: {detail}")
    elif isinstance(exc, sdk.AuthenticationError | sdk.PermissionDeniedError):
        err = LLMAuthError(f"{where}: authentication refused{http}: {detail}")
        env = f"the variable {api_key_env}" if api_key_env else "the key's variable"
        err.fix = f"put a valid key in {env} (agent.api_key_env names the variable)."
    elif isinstance(exc, sdk.APIStatusError) and isinstance(status, int) and (
        status == 404 or (400 <= status < 500 and _MODEL_MISSING.search(detail))
    ):
        err = LLMModelNotFound(f"{where}: the server does not know the model{http}: {detail}")
        err.fix = f"set agent.model to a model {provider} serves, or check agent.base_url."
    elif isinstance(exc, sdk.InternalServerError) or (
        isinstance(exc, sdk.APIStatusError) and isinstance(status, int) and status >= 500
    ):
        err = LLMServerError(f"{where}: server error{http}: {detail}")
    elif isinstance(exc, sdk.APIStatusError) and status == 408:
        err = LLMTimeout(f"{where}: request timed out{http}: {detail}")
    elif isinstance(exc, sdk.APIStatusError) and status in (400, 413, 422):
        err = LLMBadRequest(f"{where}: request rejected{http}: {detail}")
        err.fix = _bad_request_fix(detail)
    elif isinstance(exc, sdk.APIStatusError):
        err = LLMError(f"{where}: request failed{http}: {detail}")
    elif hasattr(sdk, "CredentialsError") and isinstance(exc, sdk.CredentialsError):
        err = LLMAuthError(f"{where}: no usable credentials: {detail}")
    else:
        err = LLMError(f"{where}: {type(exc).__name__}: {detail}")
    logger.debug("mapped %s to %s", type(exc).__name__, type(err).__name__)
    return err


def safe_cause(exc: BaseException, secrets: tuple[str | None, ...] = ()) -> BaseException | None:
    """``exc`` if its text is free of secrets, else ``None`` (use as ``raise … from``).

    A server may echo the key in an error body; the SDK's exception would then carry it into
    tracebacks, so it is dropped from the chain.
    """
    text = f"{exc} {getattr(exc, 'body', '')}"
    leaks = any(s and len(s) >= 4 and s in text for s in secrets)
    return None if leaks else exc
