"""The agent config as ONE pydantic model (issue 17 item 2): ``hpo.agents.AgentConfig``.

``conf/agent/auto.yaml`` is the documented default and the model its schema: the same keys and
the same defaults. A bad value is one line naming the key (``agent.<path>=<value> ...: use ...``)
whether it reaches the model from Python or from the command line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import clean_env, run_cli
from hpo.agents import AgentConfig, BudgetConfig, RoleConfig, build_chain
from hpo.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "agent"


def _auto_yaml() -> dict[str, Any]:
    doc = yaml.safe_load((CONF / "auto.yaml").read_text())
    doc.pop("defaults", None)
    return doc


def test_auto_yaml_keys_are_the_models_fields() -> None:
    doc = _auto_yaml()
    assert set(doc) == set(AgentConfig.model_fields)
    assert set(doc["budget"]) == set(BudgetConfig.model_fields)


def test_auto_yaml_defaults_are_the_models_but_the_provider() -> None:
    # the yaml's provider is auto (use a key when one is set); a Python caller's empty
    # mapping must never call an LLM, so the model's is none
    assert AgentConfig.from_mapping(_auto_yaml()) == AgentConfig(provider="auto")
    assert AgentConfig().provider == "none" and AgentConfig.from_mapping({}).no_llm


def test_every_shipped_preset_validates() -> None:
    base = _auto_yaml()
    for path in sorted(CONF.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        doc.pop("defaults", None)
        AgentConfig.from_mapping({**base, **doc})


def test_the_sampler_and_the_model_agree_on_modes_and_leaders() -> None:
    from hpo.agents.config import LEADERS, MODES
    from hpo.samplers._leader import LEADERS as SAMPLER_LEADERS
    from hpo.samplers._llm import MODES as SAMPLER_MODES

    assert (tuple(SAMPLER_MODES), tuple(SAMPLER_LEADERS)) == (MODES, LEADERS)


@pytest.mark.parametrize(
    ("cfg", "line"),
    [
        ({"budget": {"max_usd": -1}},
         "agent.budget.max_usd=-1 is invalid: use a number > 0"),
        ({"budget": {"max_tokens": 0}},
         "agent.budget.max_tokens=0 is invalid: use an integer >= 1"),
        ({"budget": 5}, "agent.budget=5 is not a mapping: use keys from max_tokens, max_usd"),
        ({"temperature": 3}, "agent.temperature=3 is invalid: use a number in [0, 2]"),
        ({"roles": {"analyst": {"temperature": 5}}},
         "agent.roles.analyst.temperature=5 is invalid: use a number in [0, 2]"),
        ({"roles": {"analyst": {"provider": "none"}}},
         "agent.roles.analyst.provider='none' is invalid for a role: remove it to use "
         "agent.provider, or set agent=none for no LLM"),
        ({"roles": {"critic": {}}}, "agent.roles.critic is not a role: use one of analyst, "),
        ({"max_tokens": 1.5}, "agent.max_tokens=1.5 is invalid: use an integer >= 1"),
        ({"history": {"best_k": -1}},
         "agent.history.best_k=-1 is invalid: use an integer >= 0"),
        ({"sensitive": "mnist"}, "agent.sensitive='mnist' is not a list: use e.g. [my_dataset]"),
        ({"adaptive_share": "yes"}, "agent.adaptive_share='yes' is invalid: use true or false"),
        ({"temperature": 3, "llm_share": 2},
         "agent.temperature=3 is invalid: use a number in [0, 2] (and 1 more problem(s))"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(cfg: dict[str, Any], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_mapping(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(line), message


def test_an_unknown_key_names_the_closest_known_one() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "agent.roles.analyst has unknown key(s) ['tempreature'] (did you mean temperature?)")):
        AgentConfig.from_mapping({"roles": {"analyst": {"tempreature": 0.2}}})
    with pytest.raises(ConfigError, match=re.escape(
            "agent config has unknown key(s) ['budgte'] (did you mean budget?)")):
        AgentConfig.from_mapping({"budgte": {}})


def test_null_means_the_default_and_values_are_normalized() -> None:
    cfg = AgentConfig.from_mapping({
        "provider": " OpenAI ", "mode": "HYBRID", "llm_share": 1, "stall_trials": 4.0,
        "budget": {"max_usd": 2, "max_tokens": None}, "history": None, "timeout_s": None,
        "temperature": None, "roles": {"analyst": {"model": "m", "temperature": 0}},
    })
    assert (cfg.provider, cfg.mode, cfg.llm_share, cfg.stall_trials) == ("openai", "hybrid",
                                                                        1.0, 4)
    assert cfg.budget == BudgetConfig(max_usd=2.0)
    assert cfg.timeout_s == 60.0  # null: the default
    assert cfg.temperature is None  # null: a value of its own (the model's temperature)
    assert cfg.roles == {"analyst": RoleConfig(model="m", temperature=0.0)}


def test_the_deprecated_json_mode_means_json_object() -> None:
    cfg = AgentConfig.from_mapping({"json_mode": True, "roles": {"proposer": {"json_mode": True}}})
    assert cfg.structured_output == "json_object"
    assert cfg.roles["proposer"].structured_output == "json_object"
    with pytest.raises(ConfigError, match=r"agent.budget has unknown key\(s\) \['json_mode'\]"):
        AgentConfig.from_mapping({"budget": {"json_mode": True}})


def test_a_chain_has_no_budget_and_says_so(caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-config-0123456789")
    with caplog.at_level(logging.WARNING, logger="hpo.agents.factory"):
        chain = build_chain({"provider": "openai", "budget": {"max_tokens": 10}})
    assert chain is not None and not hasattr(chain, "budget")
    assert any("agent.budget is enforced by the sampler" in r.getMessage()
               for r in caplog.records)


def test_a_negative_budget_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hpo.train", "-m", "trainer=debug", "agent=none",
                    "agent.budget.max_usd=-1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    f"hydra.sweeper.storage=sqlite:///{tmp_path / 's.db'}"],
                   cwd=tmp_path, env=clean_env(), check=False, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and "HYDRA_FULL_ERROR" not in line
             and not re.match(r"^\[[IWD] \d{4}-", line)]
    assert lines == ["agent.budget.max_usd=-1 is invalid: use a number > 0"]
    assert not (tmp_path / "s.db").exists()
