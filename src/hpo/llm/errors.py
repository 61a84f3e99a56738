"""Map the SDKs' exceptions to ours, in one place. Messages never contain the API key."""

from __future__ import annotations

import logging
from types import ModuleType

from hpo.llm.base import (
    LLMAuthError,
    LLMConnectionError,
    LLMError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
)

__all__ = ["map_sdk_error", "safe_cause", "scrub"]

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
) -> LLMError:
    """Translate an ``anthropic``/``openai`` SDK exception into an :class:`LLMError`.

    Both SDKs share the same exception names at top level, so ``sdk`` is the SDK module.

    Args:
        exc: The exception the SDK raised (after its own retries).
        sdk: The ``anthropic`` or ``openai`` module.
        provider: Provider name for the message (e.g. ``"deepseek"``).
        model: Model name for the message.
        secrets: Values to scrub from the message (the API key).

    Returns:
        The matching ``LLMError`` subclass instance; the caller raises it ``from exc``.
    """
    where = f"{provider} ({model})"
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
    elif isinstance(exc, sdk.InternalServerError) or (
        isinstance(exc, sdk.APIStatusError) and isinstance(status, int) and status >= 500
    ):
        err = LLMServerError(f"{where}: server error{http}: {detail}")
    elif isinstance(exc, sdk.APIStatusError) and status == 408:
        err = LLMTimeout(f"{where}: request timed out{http}: {detail}")
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
