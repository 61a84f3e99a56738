"""Hydra override grammar -> Optuna distributions (the hydra-optuna-sweeper forms, and more).

Forms, on the command line or in ``hydra.sweeper.params`` / ``conf/search_space/*.yaml``:

==================================  ==========================================================
``x=interval(0, 1)``                ``FloatDistribution(0, 1)``
``x=int(interval(1, 8))``           ``IntDistribution(1, 8)``
``x=interval(1, 8)``                ``FloatDistribution(1.0, 8.0)`` (Hydra's interval is float)
``x=tag(log, interval(1e-5, 1))``   ``FloatDistribution(1e-5, 1, log=True)``
``x=tag(log, int(interval(8, 512)))`` ``IntDistribution(8, 512, log=True)``
``x=range(1, 10, 2)``               ``IntDistribution(1, 10, step=2)``: bounds inclusive, as
                                    hydra-optuna-sweeper (high is snapped onto the grid)
``x=range(0.0, 1.0, step=0.25)``    ``FloatDistribution(0.0, 1.0, step=0.25)``
``x=shuffle(range(1, 4))``          ``CategoricalDistribution([1, 2, 3])`` (sorted, so a resumed
                                    study sees the same distribution)
``x=choice(a, b)`` / ``x=a,b``      ``CategoricalDistribution(["a", "b"])``
``model=mlp,cnn`` (config group)    ``CategoricalDistribution(["mlp", "cnn"])``
``x=3`` (no sweep)                  a fixed override passed through to every trial
==================================  ==========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.errors import SearchSpaceError, first_line

_FIX = (
    "use interval(low, high), int(interval(low, high)), tag(log, interval(low, high)), "
    "range(start, stop, step), choice(a, b, ...) or a,b,..."
)


@dataclass(frozen=True)
class ParsedParam:
    """One parameter of the sweep: a distribution to search, or a fixed override."""

    key: str  # the override key as written, e.g. "optimizer.lr", "model", "+trainer.foo"
    name: str  # the Optuna parameter name: the key without +/++/~ prefixes
    distribution: BaseDistribution | None  # None: fixed value
    fixed: str | None = None  # the override's value as written, for fixed params


def _check_choice(x: Any, key: str) -> Any:
    if not isinstance(x, str | int | float | bool | type(None)):
        raise SearchSpaceError(
            f"{key}: choice values must be str, int, float, bool or null, got {x!r}; {_FIX}"
        )
    return x


def _stable(choices: list[Any]) -> list[Any]:
    # shuffle() randomises order; a study's distribution must not change between runs
    return sorted(choices, key=lambda x: (type(x).__name__, x if x is not None else 0))


def _num(x: Any, key: str, what: str) -> int | float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise SearchSpaceError(f"{key}: {what} {x!r} is not a number; {_FIX}")
    return x


def distribution_from_override(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of one parsed override, or None when it is not a sweep."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return None
    value = override.value()
    try:
        if override.is_choice_sweep():
            assert isinstance(value, ChoiceSweep)
            choices = [
                _check_choice(x, key)
                for x in override.sweep_iterator(transformer=Transformer.encode)
            ]
            if not choices:
                raise SearchSpaceError(f"{key}: choice() needs at least one value; {_FIX}")
            if value.shuffle:
                choices = _stable(choices)
            if len(set(map(repr, choices))) != len(choices):
                raise SearchSpaceError(f"{key}: choice {choices} repeats a value; list each once")
            return CategoricalDistribution(choices)
        if override.is_range_sweep():
            assert isinstance(value, RangeSweep)
            if value.shuffle:
                choices = [
                    _check_choice(x, key)
                    for x in override.sweep_iterator(transformer=Transformer.encode)
                ]
                return CategoricalDistribution(_stable(choices))
            start = _num(value.start, key, "range start")
            stop = _num(value.stop, key, "range stop")
            step = _num(value.step, key, "range step")
            if step <= 0:
                raise SearchSpaceError(f"{key}: range step {step} must be > 0; {_FIX}")
            if stop < start:
                raise SearchSpaceError(
                    f"{key}: range({start}, {stop}) is empty: stop must be >= start"
                )
            if any(isinstance(v, float) for v in (start, stop, step)):
                n = int((stop - start) / step + 1e-9)
                return FloatDistribution(float(start), float(start + n * step), step=float(step))
            n = (int(stop) - int(start)) // int(step)
            return IntDistribution(int(start), int(start) + n * int(step), step=int(step))
        if override.is_interval_sweep():
            assert isinstance(value, IntervalSweep)
            low = _num(value.start, key, "interval low")
            high = _num(value.end, key, "interval high")
            log = "log" in value.tags
            unknown = set(value.tags) - {"log"}
            if unknown:
                raise SearchSpaceError(
                    f"{key}: unknown tag(s) {sorted(unknown)}; the only tag is log"
                )
            if high < low:
                raise SearchSpaceError(
                    f"{key}: interval({low}, {high}) has low > high; swap the bounds"
                )
            if log and low <= 0:
                raise SearchSpaceError(
                    f"{key}: tag(log, interval({low}, {high})) needs low > 0; "
                    "use a positive lower bound or drop the log tag"
                )
            if isinstance(low, int) and isinstance(high, int):
                return IntDistribution(low, high, log=log)
            return FloatDistribution(float(low), float(high), log=log)
    except SearchSpaceError:
        raise
    except ValueError as exc:  # Optuna's own checks (e.g. log with step)
        raise SearchSpaceError(f"{key}: {exc}") from exc
    raise SearchSpaceError(f"{key}: sweep {override.input_line!r} is not supported; {_FIX}")


def parse_params(
    items: list[tuple[str, str]] | list[str],
) -> list[ParsedParam]:
    """Parse ``key=value`` overrides (strings, or (key, value) pairs from a params dict)."""
    lines = [f"{k}={v}" for k, v in items] if items and isinstance(items[0], tuple) else items
    parser = OverridesParser.create()
    out: list[ParsedParam] = []
    for line in lines:
        assert isinstance(line, str)
        try:
            (override,) = parser.parse_overrides([line])
        except Exception as exc:  # hydra's OverrideParseException, with a long caret message
            first = first_line(exc)
            if first.startswith("Error parsing override") and exc.__cause__ is not None:
                first = first_line(exc.__cause__)
            raise SearchSpaceError(f"cannot parse {line!r}: {first}; {_FIX}") from exc
        key = override.get_key_element()
        dist = distribution_from_override(override)
        name = key.lstrip("+~")
        fixed = None if dist is not None else override.get_value_element_as_str()
        out.append(ParsedParam(key=key, name=name, distribution=dist, fixed=fixed))
    return out


def format_value(value: Any) -> str:
    """A trial's parameter value as an override value Hydra parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    s = str(value)
    if s and all(c.isalnum() or c in "_-./" for c in s) and not s[0].isdigit():
        return s
    # Hydra's quoted strings take backslashes as they are, except before a quote (escaped
    # here) and before ${ (an escaped interpolation, as parsed from '\${oc.env:HOME}', stays
    # escaped: the job gets the literal, as storage holds it); a trailing one is doubled
    body = s.replace("'", "\\'")
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return "'" + body + "'"
