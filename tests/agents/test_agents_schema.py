"""The per-call JSON schema built from the search space: shape, and real replies checked
against it (with ``jsonschema`` when installed, else with the small validator below)."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel

from _agents import RecordingClient, schema_errors
from _services import LocalLLM
from hpo.agents import StudyView, build_chain
from hpo.agents.chain import prompt_values
from hpo.agents.models import ConsultantReply, PlannerReply, Proposal, ProposerReply
from hpo.agents.schema import reply_schema
from hpo.space import ParamSpec, check_value
from hpo.testing.fake_llm import FakeLLMServer, fill_from_schema

SPACE = [
    ParamSpec("lr", FloatDistribution(1e-5, 1e-1, log=True), default=1e-3),
    ParamSpec("width", IntDistribution(16, 256, step=16)),
    ParamSpec("depth", IntDistribution(1, 8)),
    ParamSpec("dropout", FloatDistribution(0.0, 0.5, step=0.05)),
    ParamSpec("model", CategoricalDistribution(["mlp", "cnn"])),
    ParamSpec("hidden", IntDistribution(8, 512, log=True), condition=("model", ("mlp",))),
    ParamSpec("batch", CategoricalDistribution([16, 32, 64])),
    ParamSpec("amp", CategoricalDistribution([True, False])),
    ParamSpec("sched", CategoricalDistribution([None, "cosine", 0.5])),
]
UNCONDITIONAL = [p.name for p in SPACE if p.condition is None]


# -- shape ----------------------------------------------------------------------------------


def _params(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["properties"]["proposals"]["items"]["properties"]["params"]


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_params_schema_per_parameter():
    params = _params(reply_schema(ProposerReply, SPACE, 3))
    props = params["properties"]
    assert list(props) == [p.name for p in SPACE]
    assert props["lr"] == {"type": "number", "minimum": 1e-5, "maximum": 0.1,
                           "description": "log scale: log10 from -5 to -1"}
    assert props["width"]["type"] == "integer" and props["width"]["minimum"] == 16
    assert props["width"]["maximum"] == 256 and "a multiple of 16" in props["width"]["description"]
    assert props["depth"] == {"type": "integer", "minimum": 1, "maximum": 8}
    assert "a multiple of 0.05" in props["dropout"]["description"]
    # categoricals: the exact choice values, typed when the choices share one JSON type
    assert props["model"] == {"type": "string", "enum": ["mlp", "cnn"]}
    assert props["batch"] == {"type": "integer", "enum": [16, 32, 64]}
    assert props["amp"] == {"type": "boolean", "enum": [True, False]}
    assert props["sched"] == {"enum": [None, "cosine", 0.5]}
    # conditional: optional, said so; everything else required, nothing else allowed
    assert "only when model is mlp; leave it out otherwise" in props["hidden"]["description"]
    assert "log scale" in props["hidden"]["description"]
    assert params["required"] == UNCONDITIONAL
    assert params["additionalProperties"] is False


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize(
    ("model", "order"),
    [
        (ProposerReply, ["diagnosis", "proposals"]),
        (PlannerReply, ["rationale", "step", "proposals"]),
        (ConsultantReply, ["advice", "proposals"]),
    ],
)
def test_reply_schema_order_items_and_size(model: type[BaseModel], order: list[str], n: int):
    schema = reply_schema(model, SPACE, n)
    assert list(schema["properties"]) == order == schema["required"]
    proposals = schema["properties"]["proposals"]
    assert proposals["minItems"] == proposals["maxItems"] == n
    item = proposals["items"]
    assert list(item["properties"]) == ["rationale", "params"] == item["required"]
    # small and portable: no references, titles or defaults; well under 2 kB for 9 params
    keys = {k for k, _ in _walk(schema)}
    assert not keys & {"$ref", "$defs", "title", "default", "if", "then", "anyOf"}
    assert len(json.dumps(schema, separators=(",", ":"))) < 2000
    if model is PlannerReply:
        assert schema["properties"]["step"]["enum"] == ["small", "medium", "radical", "stop"]


def test_reply_models_put_reasoning_first():
    assert list(ProposerReply.model_fields) == ["diagnosis", "proposals"]
    assert list(Proposal.model_fields) == ["rationale", "params"]
    assert list(PlannerReply.model_fields) == ["rationale", "step", "proposals"]
    assert list(ProposerReply.model_json_schema()["properties"]) == ["diagnosis", "proposals"]


def test_n_proposals_must_be_positive():
    with pytest.raises(ValueError, match="n_proposals=0 is invalid"):
        reply_schema(ProposerReply, SPACE, 0)


# -- replies against the schema -------------------------------------------------------------


def _reply(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"diagnosis": "lr matters",
            "proposals": [{"rationale": "why", "params": p} for p in params]}


GOOD = {"lr": 1e-3, "width": 64, "depth": 2, "dropout": 0.1, "model": "mlp", "hidden": 64,
        "batch": 32, "amp": True, "sched": None}


def test_valid_and_invalid_replies():
    schema = reply_schema(ProposerReply, SPACE, 2)
    without_hidden = {k: v for k, v in GOOD.items() if k != "hidden"} | {"model": "cnn"}
    assert schema_errors(_reply([GOOD, without_hidden]), schema) == []
    bad = [
        _reply([GOOD]),  # one proposal where two are asked
        _reply([GOOD, GOOD | {"lr": 5.0}]),  # out of bounds
        _reply([GOOD, GOOD | {"model": "rnn"}]),  # not a choice
        _reply([GOOD, GOOD | {"batch": "32"}]),  # a string for an integer choice
        _reply([GOOD, GOOD | {"typo": 1}]),  # an unknown parameter
        _reply([GOOD, {k: v for k, v in GOOD.items() if k != "depth"}]),  # a required one left out
        {"proposals": _reply([GOOD, GOOD])["proposals"]},  # no diagnosis
    ]
    for reply in bad:
        assert schema_errors(reply, schema), reply


def test_replies_built_from_the_schema_are_valid_proposals():
    """What a schema-following server returns parses and passes the sampler's check."""
    rng = random.Random(0)
    values = prompt_values(StudyView(space=SPACE, directions=["minimize"], objective_names=[],
                                     trials=[], n_proposals=3))
    space_json = json.loads(values["search_space"])
    for model in (ProposerReply, PlannerReply, ConsultantReply):
        schema = reply_schema(model, SPACE, 3)
        for _ in range(5):
            reply = fill_from_schema(schema, rng=rng, search_space=space_json, n_proposals=3)
            reply["proposals"] = [
                {**p, "params": {k: v for k, v in p["params"].items()
                                 if k != "hidden" or p["params"]["model"] == "mlp"}}
                for p in reply["proposals"]
            ]
            assert schema_errors(reply, schema) == []
            parsed = model.model_validate(reply)
            for p in parsed.proposals:
                for spec in SPACE:
                    if spec.name in p.params:
                        assert check_value(spec.distribution, p.params[spec.name]) is None


def test_chain_replies_over_http_fit_the_schema_they_were_sent(monkeypatch, tmp_path):
    """The real OpenAI SDK client against the fake server: every proposing call's raw reply
    validates against the schema the chain built for it."""
    monkeypatch.chdir(tmp_path)
    with FakeLLMServer(seed=3) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-schema-0123456789")
        monkeypatch.setenv("HPO_OPENAI_BASE_URL", server.openai_base_url)
        chain = build_chain({"provider": "openai", "chain": ["consultants", "supervisor"],
                             "consultant_turns": 1, "max_retries": 0, "dump_prompts": False})
        rec = RecordingClient(chain.default.client)
        chain.default = dataclasses.replace(chain.default, client=rec)
        space = SPACE[:5]  # unconditional: the fake server fills every listed parameter
        result = chain.propose(StudyView(space=space, directions=["minimize"],
                                         objective_names=["val/loss"], trials=[], n_proposals=2))
    assert len(result.calls) == 3
    for call, asked in zip(result.calls, rec.asked, strict=True):
        assert asked["schema"] is not None
        assert schema_errors(json.loads(call.raw_text), asked["schema"]) == [], call.role


@pytest.mark.llm
def test_llama_cpp_grammar_accepts_the_schema(local_llm: LocalLLM) -> None:
    """llama-cpp-python (the local server's own venv) turns the reply schema into a grammar."""
    code = ("import json, sys; from llama_cpp import llama_grammar as g; "
            "sys.stdout.write(g.json_schema_to_gbnf(sys.stdin.read()))")
    python = local_llm.root / "venv" / "bin" / "python"
    gbnf = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True,
                          input=json.dumps(reply_schema(PlannerReply, SPACE, 2))).stdout
    assert '"\\"mlp\\"" | "\\"cnn\\""' in gbnf


# -- numbers as a grid (grammar-constrained local servers) ---------------------------------


def test_grid_lists_valid_values_spread_over_each_numeric_range() -> None:
    schema = reply_schema(ProposerReply, SPACE, 2, grid=12)
    params = schema["properties"]["proposals"]["items"]["properties"]["params"]["properties"]
    for spec in SPACE:
        prop = params[spec.name]
        assert "minimum" not in prop and "maximum" not in prop
        values = prop["enum"]
        assert all(check_value(spec.distribution, v) is None for v in values), spec.name
        assert len(set(values)) == len(values)
        d = spec.distribution
        if not isinstance(d, CategoricalDistribution):
            assert values[0] == d.low and values[-1] == d.high  # the ends are reachable
            assert 4 <= len(values) <= 24
    # a log scale is spread in log space: the middle of the grid is near the geometric middle
    lr = params["lr"]["enum"]
    assert 1e-4 < lr[len(lr) // 2] < 1e-2


def test_local_provider_gets_the_grid_and_hosted_ones_the_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeLLMServer(seed=0) as server:
        monkeypatch.setenv("HPO_LOCAL_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        view = StudyView(space=SPACE, directions=["minimize"], objective_names=["loss"],
                         trials=[], n_proposals=1)
        for provider, numbers, grid in [("local", "auto", True), ("openai", "auto", False),
                                        ("openai", "grid", True), ("local", "bounds", False)]:
            chain = build_chain({"provider": provider, "chain": "single", "max_retries": 0,
                                 "schema_numbers": numbers, "dump_prompts": False})
            assert chain is not None
            chain.propose(view)
            sent = server.requests[-1].schema
            assert sent is not None
            lr = sent["properties"]["proposals"]["items"]["properties"]["params"]["properties"]
            assert ("enum" in lr["lr"]) is grid, (provider, numbers)
            assert ("maximum" in lr["lr"]) is not grid, (provider, numbers)


def test_unknown_schema_numbers_is_one_line() -> None:
    from hpo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"agent.schema_numbers='exact' is unknown"):
        build_chain({"provider": "none", "schema_numbers": "exact"})
