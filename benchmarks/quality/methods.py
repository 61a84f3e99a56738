"""The methods compared: classical Optuna samplers and hpo's LLM modes, each behind a factory.

A :class:`Method` is a name plus a factory ``(problem, seed, n_trials, agent) -> Setup``. The
classical ones ignore ``agent``. An LLM mode builds its sampler exactly as hpo's sweeper does,
through :func:`hpo.samplers.sampler_from_agent_config`, from an ``agent`` mapping composed like
``conf/agent/<preset>.yaml``; its LLM is an :class:`Agent`:

- ``adversarial``: :class:`hpo.testing.FakeLLMServer` on loopback, scripted by
  :class:`quality.adversary.AdversarialResponder`, reached by the real OpenAI SDK client
  (preset ``openai``, model ``gpt-4o-mini``: the cost column prices the tokens at its rates);
  ``corners``: the same server, every reply a fresh worst corner (the harshest script);
- ``local``: the ``local`` preset (``$HPO_LOCAL_BASE_URL``, e.g. ``scripts/llama-local.sh``),
  with the settings of :data:`AGENT_SETTINGS` (one call per LLM trial, a CPU-sized deadline);
- ``claude``, ``openai``, ``deepseek``, ``gemini``, ``openrouter``: hosted presets, used only
  when their key is set.

Adding a mode is one line in :data:`LLM_MODES`; a mode this hpo cannot build (an older
``hpo.samplers`` without ``agent.mode``) is skipped with one line.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler

from quality.problems import Problem

CONF_AGENT = Path(__file__).resolve().parents[2] / "conf" / "agent"
FAKE_KEY_ENV = "HPO_BENCH_FAKE_KEY"
HOSTED = ("claude", "openai", "deepseek", "gemini", "openrouter")
# scripted LLMs behind the fake server: name -> the adversary's behaviours
SCRIPTED = {"adversarial": ("corner", "off_space", "repeat"), "corners": ("corner",)}
AGENTS = (*SCRIPTED, "local", *HOSTED)
# agent settings over the preset, per agent. A small model on one CPU thread takes 10-60 s a
# call: the proposer alone (as tests/llm/test_local_llm.py runs it; the analyst would double the
# calls) and a whole-call deadline that such a call meets.
AGENT_SETTINGS: dict[str, dict[str, Any]] = {
    "local": {"chain": "single", "timeout_s": 300},
}


@dataclass
class Setup:
    """A method ready to run on one problem with one seed.

    Attributes:
        sampler: The study's sampler.
        enqueue: Configurations enqueued before the first trial (a seeded start).
        close: Called once the study is done (stops a fake server).
        stats: Called after the run; extra figures for the run's record (e.g. the
            adversary's behaviour counts, the LLM requests the server saw).
    """

    sampler: BaseSampler
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    close: Callable[[], None] = lambda: None
    stats: Callable[[], dict[str, Any]] = dict


Factory = Callable[[Problem, int, int, str | None], Setup]


@dataclass(frozen=True)
class Method:
    """A named way to pick trials.

    Attributes:
        name: ``tpe``, ``cmaes``, ... or ``<mode>/<agent>`` for an LLM mode.
        llm: Whether it calls an LLM.
        factory: ``(problem, seed, n_trials, agent) -> Setup``.
        agent: The agent of an LLM mode (None for classical methods).
    """

    name: str
    llm: bool
    factory: Factory
    agent: str | None = None

    def setup(self, problem: Problem, seed: int, n_trials: int) -> Setup:
        """The sampler (and what goes with it) for one run."""
        return self.factory(problem, seed, n_trials, self.agent)


# ------------------------------------------------------------------------------- classical
def _random(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
    return Setup(optuna.samplers.RandomSampler(seed=seed))


def _tpe(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
    return Setup(optuna.samplers.TPESampler(seed=seed))


def _tpe_seeded(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
    # the defaults as trial 0, as hpo's baseline trial does: the honest control for an LLM
    return Setup(optuna.samplers.TPESampler(seed=seed), enqueue=[problem.defaults])


def _cmaes(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
    # categoricals are sampled independently (Optuna's RandomSampler), as CmaEsSampler does
    return Setup(optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False))


def _gp(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
    return Setup(optuna.samplers.GPSampler(seed=seed))


CLASSICAL: dict[str, Factory] = {
    "random": _random,
    "tpe": _tpe,
    "tpe_seeded": _tpe_seeded,
    "cmaes": _cmaes,
    "gp": _gp,
}


# ------------------------------------------------------------------------------- LLM modes
def preset_config(name: str) -> dict[str, Any]:
    """``conf/agent/<name>.yaml`` over ``conf/agent/auto.yaml``, as Hydra composes them."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_AGENT / "auto.yaml"), resolve=True)
    path = CONF_AGENT / f"{name}.yaml"
    if name != "auto" and path.exists():
        over = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        assert isinstance(cfg, dict) and isinstance(over, dict)
        over.pop("defaults", None)
        cfg.update(over)
    assert isinstance(cfg, dict)
    return {str(k): v for k, v in cfg.items()}


def agent_unavailable(agent: str) -> str | None:
    """Why ``agent`` cannot run here (one line), or None when it can."""
    from hpo.llm.providers import LOCAL_DEFAULT_BASE_URL, PRESETS

    if agent in SCRIPTED:
        return None
    if agent == "local":
        url = os.environ.get("HPO_LOCAL_BASE_URL") or LOCAL_DEFAULT_BASE_URL
        # a refused connection fails at once; a single-slot server (llama-cpp-python) answers
        # nothing while it generates, so a busy one gets a minute to finish its request
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=60):
                return None
        except OSError as exc:
            return (f"no OpenAI-compatible server at {url} ({type(exc).__name__}): start one "
                    "with scripts/llama-local.sh or set HPO_LOCAL_BASE_URL")
    if agent in PRESETS:
        key = PRESETS[agent].api_key_env
        return None if os.environ.get(key, "").strip() else f"{key} is not set"
    return f"unknown agent: use one of {', '.join(AGENTS)}"


def llm_mode(mode: str) -> Factory:
    """The factory of hpo's LLM sampler in ``agent.mode: <mode>``.

    The sampler comes from :func:`hpo.samplers.sampler_from_agent_config`, the one place where
    hpo's sweeper turns the ``agent`` mapping into a sampler, with TPE as the fallback (the
    sweeper's default) and the problem's defaults as the baseline trial.
    """

    def factory(problem: Problem, seed: int, n_trials: int, agent: str | None) -> Setup:
        from hpo.samplers import sampler_from_agent_config

        assert agent is not None
        close: Callable[[], None] = lambda: None  # noqa: E731
        stats: Callable[[], dict[str, Any]] = dict
        if agent in SCRIPTED:
            from hpo.testing.fake_llm import FakeLLMServer
            from quality.adversary import AdversarialResponder

            responder = AdversarialResponder(problem, SCRIPTED[agent])
            server = FakeLLMServer(responder=responder, seed=seed).start()
            os.environ[FAKE_KEY_ENV] = "sk-bench-not-a-secret"
            cfg = preset_config("openai")
            cfg.update(base_url=server.openai_base_url, api_key_env=FAKE_KEY_ENV,
                       max_retries=0, timeout_s=30)
            close = server.stop

            def stats() -> dict[str, Any]:
                return {"requests": len(server.requests), "adversary": dict(responder.counts)}
        else:
            cfg = preset_config(agent)
        cfg.update(AGENT_SETTINGS.get(agent, {}))
        cfg.update(dump_prompts=False, cache=False, context=problem.context)
        if mode != "propose":
            cfg["mode"] = mode
        sampler = sampler_from_agent_config(
            cfg, search_space=problem.space, fallback=optuna.samplers.TPESampler(seed=seed),
            seed=seed, batch_size=1, n_trials=n_trials, objective_names=[problem.objective],
            fidelity=problem.fidelity,
        )
        return Setup(sampler, close=close, stats=stats)

    return factory


LLM_MODES: dict[str, Factory] = {
    "propose": llm_mode("propose"),  # the LLM proposes, TPE fills the gaps
    "hybrid": llm_mode("hybrid"),  # a classical leader, the LLM proposes a share
}


def mode_unavailable(mode: str) -> str | None:
    """Why this hpo cannot build ``agent.mode: <mode>`` (one line), or None when it can."""
    from optuna.distributions import FloatDistribution

    from hpo.errors import ConfigError
    from hpo.samplers import sampler_from_agent_config
    from hpo.space import ParamSpec

    if mode == "propose":
        return None  # the default: no mode key needed
    try:
        sampler_from_agent_config(
            {"provider": "none", "mode": mode},
            search_space=[ParamSpec(name="x", distribution=FloatDistribution(0, 1), default=0.5)],
            fallback=optuna.samplers.RandomSampler(seed=0), seed=0, batch_size=1,
        )
    except ConfigError as exc:
        return f"this hpo cannot build agent.mode={mode} ({exc})"
    return None


def by_name(name: str) -> Method:
    """The method called ``name`` (``tpe``, ``propose/adversarial``, ...), unchecked.

    Raises:
        KeyError: No such method.
    """
    if name in CLASSICAL:
        return Method(name=name, llm=False, factory=CLASSICAL[name])
    mode, _, agent = name.partition("/")
    return Method(name=name, llm=True, factory=LLM_MODES[mode], agent=agent or None)


def resolve(names: list[str], agents: list[str]) -> tuple[list[Method], list[str]]:
    """The methods named (an LLM mode once per available agent), and one line per skip.

    Raises:
        ValueError: An unknown method or agent name (the message lists the known ones).
    """
    methods: list[Method] = []
    skipped: list[str] = []
    for agent in agents:
        if agent not in AGENTS:
            raise ValueError(f"--agents: {agent!r} is unknown: use {', '.join(AGENTS)}")
    usable = []
    for agent in agents:
        why = agent_unavailable(agent)
        if why is None:
            usable.append(agent)
        elif any(n in LLM_MODES for n in names):
            skipped.append(f"agent {agent}: skipped ({why})")
    for name in names:
        if name in CLASSICAL:
            methods.append(by_name(name))
        elif name in LLM_MODES:
            why = mode_unavailable(name)
            if why is None:
                methods += [by_name(f"{name}/{a}") for a in usable]
            else:
                skipped.append(f"mode {name}: skipped ({why})")
        else:
            known = ", ".join([*CLASSICAL, *LLM_MODES])
            raise ValueError(f"--methods: {name!r} is unknown: use {known}")
    return methods, skipped
