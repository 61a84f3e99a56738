"""The agent config: ONE pydantic model of the ``agent`` mapping, validated once.

``conf/agent/auto.yaml`` is the documented default (one comment per key); :class:`AgentConfig`
is its schema: the same keys, the same defaults except ``provider`` (``none`` here, so a Python
caller's empty mapping never calls an LLM; ``auto`` in the yaml). Both the chain
(:func:`hpo.agents.factory.build_chain`) and the sampler
(:func:`hpo.samplers.sampler_from_agent_config`) read the validated model, never the raw
mapping.

Rules every key follows: ``null`` means the key's default (unless the key documents null as a
value of its own, like ``temperature``, ``model`` or ``startup_trials``); a bad value is ONE
line naming the key, the value and the fix, e.g. ``agent.temperature=3 is invalid: use a number
in [0, 2]``, raised as :class:`~hpo.errors.ConfigError`. No Hydra here: the sweeper hands a
plain dict.
"""

from __future__ import annotations

import difflib
import logging
import threading
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from hpo.agents.history import HistoryOptions
from hpo.agents.stages import chain_stages
from hpo.errors import ConfigError
from hpo.llm.base import StructuredOutput
from hpo.llm.providers import ALIASES, PRESETS

__all__ = [
    "LEADERS",
    "MODES",
    "PROVIDERS",
    "ROLE_NAMES",
    "AgentConfig",
    "BudgetConfig",
    "Leader",
    "Mode",
    "RoleConfig",
    "SchemaNumbers",
]

logger = logging.getLogger(__name__)

ROLE_NAMES: tuple[str, ...] = (
    "analyst",
    "proposer",
    "consultant",
    "consultant_a",
    "consultant_b",
    "supervisor",
    "planner",
    "researcher",
    "repair",
)
SchemaNumbers = Literal["auto", "bounds", "grid"]
Mode = Literal["propose", "hybrid"]
Leader = Literal["auto", "cmaes", "tpe", "gp"]
MODES: tuple[str, ...] = typing.get_args(Mode)
LEADERS: tuple[str, ...] = typing.get_args(Leader)
# agent.provider: a preset, an alias of one, auto (the first preset with a key) or none
PROVIDERS: tuple[str, ...] = ("auto", *PRESETS, "none")
_NO_PROVIDER = ("none", "null", "off", "false", "")

# Keys that existed once: what replaced them.
_REMOVED_KEYS = {
    "dump_dir": "the sampler writes one JSON audit dump per call under <sweep dir>/llm "
    "(agent.dump_prompts): remove agent.dump_dir",
}


class _Invalid(ValueError):
    """A bad value: reported as ``agent.<key>=<value> <message>``."""


class _Mapping(ValueError):
    """A bad mapping (unknown keys): reported as ``agent.<key> <message>``."""


class _Sentence(ValueError):
    """A complete one-line message, reported as it is."""


# -- value checks (each raises _Invalid with the fix) -------------------------------------------


def _number(low: float, high: float | None = None, *, integer: bool = False,
            above: bool = False) -> BeforeValidator:
    """A number (an integer when ``integer``) >= ``low`` (> when ``above``), <= ``high``."""
    if high is not None:
        bounds = f"in [{low:g}, {high:g}]"
    else:
        bounds = f"> {low:g}" if above else f">= {low:g}"
    what = f"{'an integer' if integer else 'a number'} {bounds}"

    def check(value: Any) -> Any:
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and integer:
            ok = float(value) == int(value)
        if ok:
            ok = (value > low if above else value >= low) and (high is None or value <= high)
        if not ok:
            raise _Invalid(f"is invalid: use {what}")
        return int(value) if integer else float(value)

    return BeforeValidator(check)


def _choice(options: Sequence[str]) -> BeforeValidator:
    """One of ``options`` (case and surrounding blanks ignored)."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        text = str(value).strip().lower()
        if text not in options:
            raise _Invalid(f"is unknown: use one of {', '.join(options)}")
        return text

    return BeforeValidator(check)


def _flag(value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        raise _Invalid("is invalid: use true or false")
    return value


def _text(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float):
        raise _Invalid("is invalid: use a string")
    return None if value is None else str(value)


def _provider(value: Any) -> Any:
    if value is None:  # a role's: inherit (the agent's null is its default, none)
        return None
    if value is False:
        return "none"
    text = str(value).strip().lower()
    if text in _NO_PROVIDER:
        return "none"
    text = ALIASES.get(text, text)
    if text not in PROVIDERS:
        raise _Invalid(f"is unknown: use one of {', '.join(PROVIDERS)}")
    return text


def _role_provider(value: Any) -> Any:
    provider = _provider(value)
    if provider == "none":
        raise _Invalid("is invalid for a role: remove it to use agent.provider, or set "
                       "agent=none for no LLM")
    return provider


def _chain(value: Any) -> Any:
    if value is None:
        return "diagnose"
    try:
        chain_stages(value)
    except ValueError as exc:
        raise _Sentence(str(exc)) from None
    if isinstance(value, str):
        return value.strip().lower()
    return tuple(str(s).strip().lower() for s in value)


def _sensitive(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _Invalid("is not a list: use e.g. [my_dataset]")
    return [str(term) for term in value]


def _history(value: Any) -> Any:
    if value is None or isinstance(value, HistoryOptions):
        return value
    if not isinstance(value, Mapping):
        raise _Invalid("is not a mapping: use {best_k: 8, recent_k: 8}")
    try:
        return HistoryOptions.from_mapping(value)
    except ValueError as exc:
        raise _Sentence(f"agent.{exc}") from None


def _roles(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid("is not a mapping: use e.g. {analyst: {model: ..., temperature: 0.2}}")
    for role in value:
        if role not in ROLE_NAMES:
            raise _Sentence(
                f"agent.roles.{role} is not a role: use one of {', '.join(ROLE_NAMES)}"
            )
    return {str(role): {} if over is None else over for role, over in value.items()}


_Temperature = Annotated[float | None, _number(0, 2)]
_Share = Annotated[float, _number(0, 1)]
_Count = Annotated[int, _number(0, integer=True)]
_Flag = Annotated[bool, BeforeValidator(_flag)]
_Text = Annotated[str | None, BeforeValidator(_text)]
_Price = Annotated[float | None, _number(0)]
_Form = Annotated[StructuredOutput, _choice(typing.get_args(StructuredOutput))]
_Timeout = Annotated[float, _number(0, above=True)]
_ReplyBytes = Annotated[int, _number(1024, integer=True)]
_Tokens = Annotated[int, _number(1, integer=True)]


_warned_json_mode = threading.Event()


class _Section(BaseModel):
    """A mapping of the agent config: known keys only; ``null`` means the default."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise _Invalid(f"is not a mapping: use keys from {', '.join(cls.model_fields)}")
        data = {str(k): v for k, v in data.items()}
        for key, why in _REMOVED_KEYS.items():
            if key in data:
                raise _Sentence(f"agent config key {key!r} was removed: {why}")
        # deprecated: json_mode=true means structured_output=json_object
        json_mode = "structured_output" in cls.model_fields and data.pop("json_mode", None)
        if json_mode and data.get("structured_output") in (None, "auto"):
            _warn_json_mode()
            data["structured_output"] = "json_object"
        unknown = sorted(k for k in data if k not in cls.model_fields)
        if unknown:
            near = {m for k in unknown for m in difflib.get_close_matches(k, cls.model_fields, 1)}
            hint = f" (did you mean {', '.join(sorted(near))}?)" if near else ""
            raise _Mapping(f"has unknown key(s) {unknown}{hint}: use only "
                           f"{', '.join(sorted(cls.model_fields))}")
        # null = the default, for every key whose type has no null of its own
        return {k: v for k, v in data.items() if v is not None or _nullable(cls, k)}


def _warn_json_mode() -> None:
    if not _warned_json_mode.is_set():
        _warned_json_mode.set()
        logger.warning("agent.json_mode is deprecated: use agent.structured_output=json_object "
                       "(it now sends the schema too)")


def _nullable(model: type[BaseModel], key: str) -> bool:
    return type(None) in typing.get_args(model.model_fields[key].annotation)


class BudgetConfig(_Section):
    """``agent.budget``: spending caps over a sweep, counted by the sampler from storage.

    Attributes:
        max_tokens: LLM tokens (input + output) over the study; null: no cap.
        max_usd: LLM cost in US dollars over the study; null: no cap.
    """

    max_tokens: Annotated[int | None, _number(1, integer=True)] = None
    max_usd: Annotated[float | None, _number(0, above=True)] = None


class RoleConfig(_Section):
    """``agent.roles.<role>``: one role's overrides of the agent's settings; null inherits.

    Any key but ``temperature`` and ``max_tokens`` gives the role an LLM client of its own.
    ``provider: auto`` means the agent's provider.
    """

    provider: Annotated[str | None, BeforeValidator(_role_provider)] = None
    model: _Text = None
    api_key_env: _Text = None
    base_url: _Text = None
    temperature: _Temperature = None
    timeout_s: Annotated[float | None, _number(0, above=True)] = None
    max_retries: Annotated[int | None, _number(0, integer=True)] = None
    max_tokens: Annotated[int | None, _number(1, integer=True)] = None
    structured_output: Annotated[StructuredOutput | None,
                                 _choice(typing.get_args(StructuredOutput))] = None
    max_reply_bytes: Annotated[int | None, _number(1024, integer=True)] = None
    price_in_per_mtok: _Price = None
    price_out_per_mtok: _Price = None


class AgentConfig(_Section):
    """The ``agent`` mapping (``conf/agent/auto.yaml`` documents each key and its default).

    Build it with :meth:`from_mapping` (errors as one-line :class:`~hpo.errors.ConfigError`).
    The chain's keys: ``provider`` .. ``roles``; the sampler's: ``mode`` .. ``budget``,
    ``dump_prompts`` and ``context``.
    """

    # the LLM client of every role
    provider: Annotated[str, BeforeValidator(_provider)] = "none"
    model: _Text = None
    base_url: _Text = None
    api_key_env: _Text = None
    temperature: _Temperature = 0.7
    timeout_s: _Timeout = 60.0
    max_retries: Annotated[int, _number(0, integer=True)] = 2
    max_tokens: _Tokens = 2048
    structured_output: _Form = "auto"
    schema_numbers: Annotated[SchemaNumbers, _choice(typing.get_args(SchemaNumbers))] = "auto"
    max_reply_bytes: _ReplyBytes = 262144
    price_in_per_mtok: _Price = None
    price_out_per_mtok: _Price = None
    # the chain
    chain: Annotated[str | tuple[str, ...], BeforeValidator(_chain)] = "diagnose"
    consultant_turns: Annotated[int, _number(1, integer=True)] = 2
    researcher: _Flag = False
    anonymize: _Flag = True
    sensitive: Annotated[list[str], BeforeValidator(_sensitive)] = Field(default_factory=list)
    context: _Text = None
    history: Annotated[HistoryOptions, BeforeValidator(_history)] = Field(
        default_factory=HistoryOptions
    )
    roles: Annotated[dict[str, RoleConfig], BeforeValidator(_roles)] = Field(
        default_factory=dict
    )
    # the sampler
    mode: Annotated[Mode, _choice(MODES)] = "propose"
    leader: Annotated[Leader, _choice(LEADERS)] = "auto"
    llm_share: _Share = 0.25
    stall_trials: _Count = 10
    rank_candidates: _Count = 0
    fallback_share: _Share = 0.0
    adaptive_share: _Flag = True
    llm_floor: _Share = 0.05
    startup_trials: Annotated[int | None, _number(0, integer=True)] = None
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    cache: _Flag = False
    cache_dir: Annotated[str, BeforeValidator(_text)] = "outputs/.llm_cache"
    dump_prompts: _Flag = True
    prompts_dir: _Text = None

    @model_validator(mode="after")
    def _combinations(self) -> AgentConfig:
        if self.mode == "hybrid" and self.fallback_share:
            raise _Sentence(
                f"agent.fallback_share={self.fallback_share} applies to agent.mode=propose: with "
                "agent.mode=hybrid set agent.llm_share (the LLM's share) instead"
            )
        if self.rank_candidates and (self.mode != "hybrid"
                                     or self.leader not in ("auto", "cmaes")):
            raise _Sentence(
                f"agent.rank_candidates={self.rank_candidates} needs agent.mode=hybrid with the "
                "CMA-ES leader (agent.leader=cmaes): set those, or agent.rank_candidates=0"
            )
        return self

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | AgentConfig) -> AgentConfig:
        """The validated config of a plain mapping shaped like ``conf/agent/auto.yaml``.

        Raises:
            ConfigError: One line naming the first bad key, its value and the fix (and how many
                more problems there are).
        """
        if isinstance(cfg, AgentConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(
                f"agent config {cfg!r} is not a mapping: pass a dict shaped like "
                "conf/agent/auto.yaml"
            )
        try:
            return cls.model_validate(cfg)
        except ValidationError as exc:
            raise ConfigError(one_line(exc)) from None

    @property
    def stages(self) -> tuple[str, tuple[str, ...]]:
        """The chain's name and its stages (``chain`` with ``researcher`` applied)."""
        return chain_stages(self.chain, researcher=self.researcher)

    @property
    def no_llm(self) -> bool:
        """``provider: none``: every trial from the classical sampler."""
        return self.provider == "none"


def one_line(exc: ValidationError) -> str:
    """The first problem of a validation of the agent config, as one line naming the key."""
    problems = exc.errors()
    text = _describe(problems[0])
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem(s))"
    return text


def _describe(problem: Mapping[str, Any]) -> str:
    path = ".".join(str(p) for p in problem["loc"])
    key = f"agent.{path}" if path else "agent config"
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, _Sentence):
        return str(cause)
    if isinstance(cause, _Mapping):
        return f"{key} {cause}"
    if isinstance(cause, _Invalid):
        return f"{key}={problem['input']!r} {cause}"
    msg = str(problem.get("msg") or "is invalid")
    return f"{key}={problem.get('input')!r} is invalid: {msg[:1].lower()}{msg[1:]}"
