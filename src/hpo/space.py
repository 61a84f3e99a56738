"""The search space as the agents and the sampler see it. Knows Optuna, not Hydra.

CONTRACT (shared by the sweeper, hpo.agents and hpo.samplers): keep these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


@dataclass(frozen=True)
class ParamSpec:
    """One searchable parameter: its Optuna distribution plus what the LLM should know."""

    name: str
    distribution: BaseDistribution
    default: Any = None
    description: str = ""
    # A conditional parameter: active only when the searched parameter ``condition[0]`` takes
    # one of the values ``condition[1]`` (compared as strings), e.g. ("model", ("mlp",)).
    # None: always active.
    condition: tuple[str, tuple[str, ...]] | None = None
    # The config's own default when it lay outside ``distribution``: ``default`` is then its
    # clamped value, and the baseline trial records the parameter as ``clamped``. None: the
    # default is the config's value as it is.
    configured_default: Any = None

    def to_prompt_dict(self) -> dict[str, Any]:
        """A JSON-able description for prompts (bounds, scale, choices, default)."""
        d = self.distribution
        out: dict[str, Any] = {}
        if isinstance(d, FloatDistribution):
            out = {"type": "float", "low": d.low, "high": d.high, "log": d.log}
            if d.step is not None:
                out["step"] = d.step
        elif isinstance(d, IntDistribution):
            out = {"type": "int", "low": d.low, "high": d.high, "log": d.log, "step": d.step}
        elif isinstance(d, CategoricalDistribution):
            out = {"type": "categorical", "choices": list(d.choices)}
        if self.default is not None:
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        return out


def step_values(dist: BaseDistribution) -> list[Any] | None:
    """Every value on the step grid of an int or float range, ends included (floats rounded
    to 12 places, never above ``high``); None for a distribution without a step."""
    if not isinstance(dist, IntDistribution | FloatDistribution) or dist.step is None:
        return None
    low, high, step = dist.low, dist.high, dist.step
    count = round((high - low) / step) + 1
    if isinstance(dist, IntDistribution):
        return [int(low + i * step) for i in range(count)]
    return [min(round(low + i * step, 12), high) for i in range(count)]


def check_value(dist: BaseDistribution, value: Any) -> str | None:
    """Why ``value`` is not a valid sample of ``dist``, or None when it is."""
    if isinstance(dist, CategoricalDistribution):
        for c in dist.choices:
            if value == c and isinstance(value, bool) == isinstance(c, bool):
                return None
        return f"{value!r} is not one of {list(dist.choices)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value!r} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not finite"
    if isinstance(dist, IntDistribution):
        if float(value) != int(value):
            return f"{value!r} is not an integer"
        if not dist.low <= value <= dist.high:
            return f"{value!r} is outside [{dist.low}, {dist.high}]"
        if (int(value) - dist.low) % dist.step:
            return f"{value!r} is not on the grid low={dist.low} step={dist.step}"
        return None
    if isinstance(dist, FloatDistribution):
        if not dist.low <= value <= dist.high:
            return f"{value!r} is outside [{dist.low}, {dist.high}]"
        if dist.step is not None:
            k = (value - dist.low) / dist.step
            if abs(k - round(k)) > 1e-6:
                return f"{value!r} is not on the grid low={dist.low} step={dist.step}"
        return None
    return f"unsupported distribution {dist!r}"


def clamp_value(dist: BaseDistribution, value: Any) -> Any | None:
    """The nearest valid value to a numeric ``value``; None when it cannot be clamped."""
    if isinstance(dist, CategoricalDistribution):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    if isinstance(dist, IntDistribution):
        v = min(max(v, dist.low), dist.high)
        k = round((v - dist.low) / dist.step)
        return int(min(dist.low + k * dist.step, dist.high))
    if isinstance(dist, FloatDistribution):
        v = min(max(v, dist.low), dist.high)
        if dist.step is not None:
            k = round((v - dist.low) / dist.step)
            v = min(dist.low + k * dist.step, dist.high)
        return v
    return None
