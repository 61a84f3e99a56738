"""Token prices in USD per million tokens, for cost accounting.

Prices are list prices at the time of writing and only an estimate; override them per agent in
config (``price_in_per_mtok`` / ``price_out_per_mtok``). Unknown models cost 0.
"""

from __future__ import annotations

import logging
import re

__all__ = ["PRICES", "cost_usd", "price_for"]

logger = logging.getLogger(__name__)

# model name (prefix) -> (input, output) USD per million tokens
PRICES: dict[str, tuple[float, float]] = {
    # Anthropic
    "claude-fable-5-2": (8.0, 40.0),
    "claude-fable-5-1": (10.0, 50.0),
    "claude-opus-5-5": (4.0, 20.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-sonnet-5": (2.0, 10.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    # OpenAI
    "gpt-5.4-mini": (0.75, 4.5),
    "gpt-5.4-nano": (0.2, 1.25),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "o4-mini": (1.1, 4.4),
    "o3": (2.0, 8.0),
    # DeepSeek
    "deepseek-chat": (0.28, 0.42),
    "deepseek-reasoner": (0.28, 0.42),
    # Google Gemini
    "gemini-2.5-pro": (1.25, 10.0),
    "gemini-2.5-flash": (0.3, 2.5),
    "gemini-2.5-flash-lite": (0.1, 0.4),
    "gemini-2.0-flash": (0.1, 0.4),
    "gemini-2.0-flash-lite": (0.075, 0.3),
}

_warned: set[str] = set()


def _norm(name: str) -> str:
    # "anthropic/claude-sonnet-4.5" (OpenRouter) -> "claude-sonnet-4-5"; "models/gemini-…" too.
    return name.strip().lower().rsplit("/", 1)[-1].replace(".", "-")


# dated snapshots: "-20250929", "-2024-08-06"
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")

_NORMALIZED = {_norm(k): v for k, v in PRICES.items()}


def price_for(model: str) -> tuple[float, float]:
    """Return ``(input, output)`` USD per million tokens for ``model``.

    Dated snapshots (``claude-sonnet-4-5-20250929``, ``gpt-4o-2024-08-06``) take the price of
    their base name; provider prefixes (``openai/…``) and ``.`` vs ``-`` in versions are ignored.
    Unknown models cost ``(0, 0)`` (logged once): set the price in config rather than trust a
    guess.

    Args:
        model: The model name as sent to the provider.
    """
    key = _norm(model)
    for candidate in (key, _DATE_SUFFIX.sub("", key)):
        if candidate in _NORMALIZED:
            return _NORMALIZED[candidate]
    if model not in _warned:
        _warned.add(model)
        logger.debug("no price known for model %r: counting its cost as 0", model)
    return (0.0, 0.0)


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    price_in_per_mtok: float | None = None,
    price_out_per_mtok: float | None = None,
) -> float:
    """Cost in USD of one call; explicit prices (from config) win over the table.

    Args:
        model: The model name.
        input_tokens: Prompt tokens billed.
        output_tokens: Completion tokens billed.
        price_in_per_mtok: Override of the input price, USD per million tokens.
        price_out_per_mtok: Override of the output price, USD per million tokens.
    """
    table_in, table_out = price_for(model)
    p_in = table_in if price_in_per_mtok is None else price_in_per_mtok
    p_out = table_out if price_out_per_mtok is None else price_out_per_mtok
    return (input_tokens * p_in + output_tokens * p_out) / 1_000_000
