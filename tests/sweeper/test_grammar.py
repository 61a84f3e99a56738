"""Override grammar -> Optuna distributions, table-driven (every hydra-optuna-sweeper form)."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.errors import SearchSpaceError
from hydra_plugins.hpo_sweeper._grammar import format_value, parse_params

F, Int, C = FloatDistribution, IntDistribution, CategoricalDistribution

CASES = [
    # hydra-optuna-sweeper documentation forms
    ("x=range(-5.5, 5.5, step=0.5)", F(-5.5, 5.5, step=0.5)),
    ("y=choice(-5, 0, 5)", C([-5, 0, 5])),
    ("x=tag(log, interval(1, 10))", F(1.0, 10.0, log=True)),
    ("y=interval(1, 10)", F(1.0, 10.0)),
    ("x=int(interval(-5, 5))", Int(-5, 5)),
    ("z=choice(foo, bar)", C(["foo", "bar"])),
    ("x=range(-5, 5)", Int(-5, 5)),
    ("x=range(1, 10, 2)", Int(1, 9, step=2)),
    ("x=range(0, 10, step=3)", Int(0, 9, step=3)),
    ("x=range(0.0, 1.0, 0.25)", F(0.0, 1.0, step=0.25)),
    ("x=shuffle(range(1, 4))", C([1, 2, 3])),
    ("x=shuffle(c, a, b)", C(["a", "b", "c"])),
    ("x=a,b,c", C(["a", "b", "c"])),
    ("x=1,2,3", C([1, 2, 3])),
    ("x=true,false", C([True, False])),
    ("x=choice(1, 0.5, word)", C([1, 0.5, "word"])),
    ("x=tag(log, int(interval(8, 512)))", Int(8, 512, log=True)),
    ("x=int(interval(1, 8))", Int(1, 8)),
    ("x=interval(0, 1)", F(0.0, 1.0)),
    ("optimizer.lr=tag(log, interval(1e-5, 1e-1))", F(1e-5, 1e-1, log=True)),
    ("model=mlp,cnn", C(["mlp", "cnn"])),
]


@pytest.mark.parametrize(("line", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sweep_forms_map_to_distributions(line: str, expected: object) -> None:
    (p,) = parse_params([line])
    assert p.distribution == expected
    assert p.fixed is None


@pytest.mark.parametrize(
    ("line", "name", "fixed"),
    [("x=3", "x", "3"), ("+a.b=hello", "a.b", "hello"), ("++c=1.5", "c", "1.5")],
)
def test_plain_overrides_pass_through_as_fixed(line: str, name: str, fixed: str) -> None:
    (p,) = parse_params([line])
    assert (p.name, p.distribution, p.fixed) == (name, None, fixed)


def test_params_dict_pairs_parse_like_the_command_line() -> None:
    (p,) = parse_params([("optimizer.lr", "tag(log, interval(1e-4, 1e-1))")])
    assert p.key == "optimizer.lr" and p.distribution == F(1e-4, 1e-1, log=True)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("x=interval(1, 0)", "low > high"),
        ("x=tag(log, interval(0, 1))", "needs low > 0"),
        ("x=tag(lg, interval(1, 2))", "unknown tag"),
        ("x=choice(", "cannot parse"),
        ("x=range(1, 10, 0)", "step 0 must be > 0"),
        ("x=range(10, 1)", "is empty"),
        ("x=choice(a, a)", "repeats"),
    ],
)
def test_bad_grammar_is_one_clear_line(line: str, needle: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_params([line])
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize(
    "value", [0.001, 1e-07, 3, -2, True, False, None, "adamw", "a b", "it's", "1abc", "x=y"]
)
def test_format_value_round_trips_through_hydra(value: object) -> None:
    (p,) = parse_params([f"k={format_value(value)}"])
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (o,) = OverridesParser.create().parse_overrides([f"k={format_value(value)}"])
    assert p.distribution is None
    assert o.value() == value
