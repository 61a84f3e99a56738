"""The JSON schema of one LLM call, built from the search space.

A proposing role (proposer, repair, supervisor, planner, consultant) is sent a schema whose
``proposals`` array holds exactly ``n`` items, each with one property per search-space parameter:
``enum`` with the exact choice values for categoricals, ``number``/``integer`` with ``minimum``
and ``maximum`` for numbers, ``required`` = the unconditional parameters (a conditional one may be
left out). The reasoning fields come before the numbers, in the order of the reply model's own
fields. The reply is still parsed into the pydantic reply model and checked by the sampler: the
schema guides the server, it proves nothing.

The schema is small (it is sent with every call) and uses only keywords that OpenAI's non-strict
``json_schema``, llama-cpp-python's ``json_object`` + ``schema`` grammar and Anthropic's tool
``input_schema`` all accept: no ``$ref``, no ``title``, no ``default``, no ``if``/``then``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel

from hpo.space import ParamSpec, step_values

__all__ = ["condition_text", "numeric_grid", "param_schema", "params_schema", "reply_schema"]

_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: bool is an int subclass
    (int, "integer"),
    (float, "number"),
    (str, "string"),
)


def _json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    for py, name in _JSON_TYPES:
        if isinstance(value, py):
            return name
    return None


def _g(x: float) -> str:
    return f"{x:.4g}"


def condition_text(spec: ParamSpec) -> str | None:
    """``"only when model is mlp"`` for a conditional parameter, else None."""
    if spec.condition is None:
        return None
    parent, values = spec.condition
    shown = " or ".join(str(v) for v in values)
    return f"only when {parent} is {shown}"


def numeric_grid(dist: IntDistribution | FloatDistribution, points: int) -> list[int | float]:
    """About ``points`` valid values spread over ``dist`` (log-spaced on a log scale).

    Ends included; on the step grid where ``dist`` has a step; floats rounded to 3 significant
    digits but never outside the bounds. A range with few valid values lists them all.
    """
    low, high = dist.low, dist.high
    values = None if isinstance(dist, IntDistribution) and dist.log else step_values(dist)
    if values is not None:
        if len(values) <= 2 * points:
            return values
        count = len(values)
        return [values[i] for i in sorted({round(i * (count - 1) / (points - 1))
                                           for i in range(points)})]
    if dist.log:
        lo, hi = math.log(low), math.log(high)
        raw = [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]
    else:
        raw = [low + (high - low) * i / (points - 1) for i in range(points)]
    out: list[int | float] = []
    for i, v in enumerate(raw):
        if i in (0, points - 1):
            value: int | float = low if i == 0 else high
        elif isinstance(dist, IntDistribution):
            value = round(v)
        else:
            value = min(max(float(f"{v:.3g}"), low), high)
        if value not in out:
            out.append(value)
    return out


def param_schema(spec: ParamSpec, *, grid: int | None = None) -> dict[str, Any]:
    """The schema of one parameter's value (bounds, choices; scale and step described).

    Args:
        spec: The parameter.
        grid: Numbers as an ``enum`` of about this many values inside the bounds (see
            :func:`numeric_grid`) instead of ``minimum``/``maximum``: grammar-constrained
            servers (llama.cpp, llama-cpp-python, Ollama) enforce an enum but not float bounds.
    """
    d = spec.distribution
    out: dict[str, Any]
    notes: list[str] = []
    if isinstance(d, CategoricalDistribution):
        choices = list(d.choices)
        types = {_json_type(c) for c in choices}
        out = {"type": types.pop()} if len(types) == 1 and None not in types else {}
        out["enum"] = choices
    elif isinstance(d, IntDistribution | FloatDistribution):
        integer = isinstance(d, IntDistribution)
        out = {"type": "integer" if integer else "number"}
        if grid:
            out["enum"] = numeric_grid(d, grid)
            notes.append(f"a grid inside [{_g(d.low)}, {_g(d.high)}]")
        else:
            out.update(minimum=d.low, maximum=d.high)
        if d.log:
            notes.append(
                f"log scale: log10 from {_g(math.log10(d.low))} to {_g(math.log10(d.high))}"
            )
        step = d.step
        if step is not None and not (integer and step == 1):
            notes.append(f"a multiple of {step} above {d.low}")
    else:  # a distribution Optuna may add one day: let the sampler's check decide
        out = {}
    cond = condition_text(spec)
    if cond:
        notes.append(f"{cond}; leave it out otherwise")
    if notes:
        out["description"] = "; ".join(notes)
    return out


def params_schema(space: Sequence[ParamSpec], *, grid: int | None = None) -> dict[str, Any]:
    """The ``params`` object: one property per parameter, unconditional ones required."""
    return {
        "type": "object",
        "properties": {p.name: param_schema(p, grid=grid) for p in space},
        "required": [p.name for p in space if p.condition is None],
        "additionalProperties": False,
    }


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with local ``$ref``s inlined, without ``title``/``default``/``$defs``."""
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        merged = {**defs.get(ref.rsplit("/", 1)[-1], {}), **{k: v for k, v in node.items()
                                                              if k != "$ref"}}
        return _inline(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "default", "$defs"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs)
    return out


def reply_schema(
    reply_model: type[BaseModel],
    space: Sequence[ParamSpec],
    n_proposals: int,
    *,
    grid: int | None = None,
) -> dict[str, Any]:
    """The schema sent with one call of a proposing role.

    Every top-level field of ``reply_model`` is required, in the model's field order (reasoning
    first). Its ``proposals`` field, when it has one, becomes an array of exactly
    ``n_proposals`` items whose ``params`` is :func:`params_schema` of ``space``.

    Args:
        reply_model: The pydantic reply model (e.g. ``ProposerReply``).
        space: The search space of this call.
        n_proposals: How many proposals the call asks for (at least 1).
        grid: Numbers as a grid of about this many values (see :func:`param_schema`).

    Raises:
        ValueError: ``n_proposals`` < 1.
    """
    if n_proposals < 1:
        raise ValueError(f"n_proposals={n_proposals} is invalid: ask for at least 1")
    base = reply_model.model_json_schema()
    schema: dict[str, Any] = _inline(base, base.get("$defs", {}))
    props: dict[str, Any] = schema.get("properties", {})
    proposals = props.get("proposals")
    if isinstance(proposals, dict):
        item_props = dict((proposals.get("items") or {}).get("properties") or {})
        item_props["params"] = params_schema(space, grid=grid)
        props["proposals"] = {
            "type": "array",
            "items": {"type": "object", "properties": item_props, "required": list(item_props)},
            "minItems": n_proposals,
            "maxItems": n_proposals,
        }
    # the model's docstring travels beside the schema (the json_schema / tool description)
    return {"type": "object", "properties": props, "required": list(props)}
