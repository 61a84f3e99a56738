"""The checker: LLM proposals against the search space (check, repair, clamp, normalize).

Pure functions over plain values; the sampler decides what to do with their verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.space import check_value, clamp_value

__all__ = [
    "Candidate",
    "apply_repair",
    "check_proposal",
    "clamp_rest",
    "key",
    "normalize",
]


@dataclass
class Candidate:
    """One proposal on its way through the checker."""

    index: int  # 1-based position in the chain's reply, as the repair prompt names it
    raw: dict[str, Any]
    rationale: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def check_proposal(
    index: int, params: dict[str, Any], rationale: str, space: dict[str, BaseDistribution]
) -> Candidate:
    """Check one proposal: valid values kept (normalized), the rest listed as problems."""
    c = Candidate(index=index, raw=params, rationale=str(rationale or ""))
    c.unknown = sorted(str(k) for k in params if k not in space)
    for name, dist in space.items():
        if name not in params or params[name] is None:
            c.problems[name] = "is missing"
            continue
        msg = check_value(dist, params[name])
        if msg is None:
            c.values[name] = normalize(dist, params[name])
            c.sources[name] = "llm"
        else:
            c.problems[name] = msg
    return c


def apply_repair(
    candidates: list[Candidate],
    repaired: list[dict[str, Any]],
    space: dict[str, BaseDistribution],
) -> None:
    """Take the repaired values of the parameters that had problems.

    A repair reply either restates the whole batch (same length, matched by position) or lists
    only the corrected proposals (matched in order to the proposals that had problems).
    """
    invalid = [c for c in candidates if c.problems]
    if len(repaired) == len(candidates):
        pairs = [(c, repaired[i]) for i, c in enumerate(candidates) if c.problems]
    else:
        pairs = list(zip(invalid, repaired, strict=False))
    for c, params in pairs:
        for name in list(c.problems):
            if name not in params or params[name] is None:
                continue
            if check_value(space[name], params[name]) is None:
                c.values[name] = normalize(space[name], params[name])
                c.sources[name] = "repaired"
                del c.problems[name]
            else:
                c.raw[name] = params[name]  # clamp the repaired value, the newer guess


def clamp_rest(c: Candidate, space: dict[str, BaseDistribution]) -> None:
    """Clamp what is still invalid; what cannot be clamped is left to the fallback."""
    for name in list(c.problems):
        if name in c.raw and c.raw[name] is not None:
            clamped = clamp_value(space[name], c.raw[name])
            if clamped is not None and check_value(space[name], clamped) is None:
                c.values[name] = normalize(space[name], clamped)
                c.sources[name] = "clamped"
                del c.problems[name]


def normalize(dist: BaseDistribution, value: Any) -> Any:
    """The value with the Python type Optuna expects (int for ints, the choice object)."""
    if isinstance(dist, IntDistribution):
        return int(value)
    if isinstance(dist, FloatDistribution):
        value = float(value)
        if dist.step is not None:  # snap onto the grid Optuna checks with a tighter tolerance
            k = round((value - dist.low) / dist.step)
            value = min(max(dist.low + k * dist.step, dist.low), dist.high)
        return value
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
    return value


def key(params: Mapping[str, Any], names: list[str]) -> tuple[Any, ...]:
    """A hashable identity of a configuration over ``names`` (floats to 10 digits)."""
    out: list[Any] = []
    for n in names:
        v = params[n]
        if isinstance(v, float):
            v = float(f"{v:.10g}")
        out.append((n, type(v).__name__ if isinstance(v, bool) else "", v))
    return tuple(out)
