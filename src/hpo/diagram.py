"""The configured agent chain as a Mermaid flowchart.

``python -m hpo.diagram`` prints the chain of ``conf/agent/auto.yaml`` as Mermaid text (paste it
into a Markdown file or https://mermaid.live); ``--agent claude`` picks another preset,
``--chain planner`` / ``--researcher`` override the preset, ``--out chain.mmd`` writes a file and
``--png chain.png`` renders a PNG when the Mermaid CLI (``mmdc``) is installed; without it the
``.mmd`` is written beside the PNG's path and the command says how to render it.

The drawing follows the house rules: every proposal passes the checker, what fails is repaired
once, then clamped or replaced by the fallback sampler, and every trial lands in the storage
with its provenance.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpo.agents.config import AgentConfig
from hpo.agents.stages import PRESETS
from hpo.errors import ConfigError, HPOError

__all__ = ["CHAIN_NAMES", "chain_mermaid", "load_agent_config", "main"]

CHAIN_NAMES: tuple[str, ...] = tuple(PRESETS)
MMDC = "mmdc"
# what each stage does, as its node says
_STAGE_TEXT = {
    "researcher": ("Researcher", "remedies"),
    "analyst": ("Analyst", "diagnosis; skipped on a conclusive rule verdict"),
    "proposer": ("Proposer", "proposals + rationale"),
    "supervisor": ("Supervisor", "decides: proposals + rationale"),
    "planner": ("Planner", "step small / medium / radical, or stop"),
}


def _label(*lines: str) -> str:
    """A quoted Mermaid node label; quotes and angle brackets in values are escaped."""
    safe = [line.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
            for line in lines if line]
    return '"' + "<br/>".join(safe) + '"'


def _role_model(cfg: AgentConfig, role: str) -> str:
    own = cfg.roles.get(role)
    if role.startswith("consultant_") and own is None:
        own = cfg.roles.get("consultant")
    model = own.model if own is not None else None
    provider = own.provider if own is not None else None
    if model or provider:
        return f"({provider or cfg.provider} / {model or 'default model'})"
    return ""


def chain_mermaid(
    agent_cfg: Mapping[str, Any] | AgentConfig,
    *,
    fallback_sampler: str = "TPESampler",
    storage: str = "Optuna storage",
) -> str:
    """The agent chain configured by ``agent_cfg`` as a Mermaid flowchart.

    Args:
        agent_cfg: An :class:`~hpo.agents.AgentConfig`, or a mapping shaped like
            ``conf/agent/*.yaml`` validated as one (``chain`` is a preset or a list of stages).
        fallback_sampler: Name of the classical sampler the LLM sampler falls back to (in
            ``agent.mode: hybrid``, the leader that runs the study).
        storage: Label of the storage node (e.g. a redacted URL).

    Returns:
        Mermaid source (``flowchart TD ...``), ending with a newline.

    Raises:
        ConfigError: The config is not a valid agent config (one line naming the key).
    """
    cfg = AgentConfig.from_mapping(agent_cfg)
    name, stages = cfg.stages
    body = [s for s in stages if s != "checker"]
    hybrid = cfg.mode == "hybrid"
    caps = [f"{k}={v}" for k, v in cfg.budget.model_dump().items() if v is not None]

    out = ["flowchart TD"]
    add = out.append
    add(f"  storage[({_label(storage, 'trials, params, values, provenance, notes')})]")
    add(f"  trial[{_label('New trial', 'hpo:source, rationale, tokens, cost')}]")
    if hybrid:
        leader = _label("Leader: classical sampler", f"agent.leader={cfg.leader}",
                        "learns from every trial")
        add(f"  fallback[{leader}]")
    else:
        add(f"  fallback[{_label('Fallback sampler', fallback_sampler)}]")
    add("  trial -->|ask, launch, tell| storage")
    add("  fallback --> trial")
    if cfg.no_llm:
        add(f"  history[{_label('Study history')}]")
        add("  storage --> history --> fallback")
        add(f"  note[{_label('agent.provider=none: no LLM, every trial from the fallback')}]")
        add("  note -.- fallback")
        return "\n".join(out) + "\n"

    history = _label("History view", "best k + recent k trials, curve features, rule verdict")
    add(f"  history[{history}]")
    add("  storage -->|history| history")
    title = f"agent chain: {name} ({cfg.provider} / {cfg.model or 'preset default model'})"
    if cfg.cache:
        title += ", reply cache"
    add(f"  subgraph chain[{_label(title)}]")
    entry: dict[str, str] = {}  # stage -> its first node, and last node
    leave: dict[str, str] = {}
    for stage in body:
        if stage == "consultants":
            for node, text in (("consultant_a", "Consultant A"), ("consultant_b", "Consultant B")):
                add(f"    {node}[{_label(text, '', _role_model(cfg, node))}]")
            turns = cfg.consultant_turns
            add(f"    consultant_a <-->|{turns} turn{'s' * (turns != 1)}| consultant_b")
            entry[stage], leave[stage] = "consultant_a", "consultant_b"
            continue
        title_, what = _STAGE_TEXT[stage]
        add(f"    {stage}[{_label(title_, what, _role_model(cfg, stage))}]")
        entry[stage] = leave[stage] = stage
    if body == ["analyst", "proposer"]:
        add("    analyst -->|diagnosis| proposer")
    else:  # chains of arrows, broken where a stage is two nodes (the consultants)
        path: list[str] = []
        for stage in body:
            path.append(entry[stage])
            if entry[stage] != leave[stage]:
                if len(path) > 1:
                    add("    " + " --> ".join(path))
                path = [leave[stage]]
        if len(path) > 1:
            add("    " + " --> ".join(path))
    add("  end")
    first, last = entry[body[0]], leave[body[-1]]
    add(f"  history --> {first}")
    add(f"  checker{{{_label('Checker', 'params vs distributions')}}}")
    add(f"  repair[{_label('Repair', 'one LLM call', _role_model(cfg, 'repair'))}]")
    add(f"  recheck{{{_label('Check again')}}}")
    add(f"  clamp[{_label('Clamp into range', 'or fallback value per param')}]")
    add(f"  {last} -->|proposals| checker")
    add("  checker -->|valid: llm| trial")
    add("  checker -->|invalid| repair --> recheck")
    add("  recheck -->|valid: repaired| trial")
    add("  recheck -->|still invalid: clamped| clamp --> trial")
    reasons = ["LLM error", "no proposal"]
    if caps:
        reasons.append("budget spent (" + ", ".join(caps) + ")")
    add(f"  {last} -.->|{_edge(' / '.join(reasons))}| fallback")
    if hybrid:
        share = f"llm_share {cfg.llm_share:.0%} of trials, all after {cfg.stall_trials} " \
                "without progress"
        add(f"  fallback -->|{_edge('its state: mean, step size, best trials')}| {first}")
        add(f"  history -.->|{_edge(share)}| {first}")
    elif cfg.fallback_share > 0:
        add(f"  history -.->|{_edge(f'fallback_share {cfg.fallback_share:.0%} of trials')}| "
            "fallback")
    if cfg.adaptive_share:
        bandit = _label("Source choice per trial", "by how LLM and classical trials rank",
                        f"LLM floor {cfg.llm_floor:.0%}")
        add(f"  bandit{{{bandit}}}")
        add("  storage -.->|ranks| bandit")
        add("  bandit -.->|LLM| history")
        add("  bandit -.->|classical| fallback")
    if body[-1] == "planner":
        add(f"  stop([{_label('Sweep stops')}])")
        add("  planner -.->|stop| stop")
    if cfg.provider == "auto":
        auto = _label("provider auto: the first API key set;", "none set: fallback only")
        add(f"  auto[{auto}]")
        add("  auto -.- chain")
    return "\n".join(out) + "\n"


def _edge(text: str) -> str:
    """An edge label; Mermaid ends labels at ``|``, so that character is replaced."""
    return text.replace("|", "/").replace('"', "'")


def load_agent_config(preset: str = "auto") -> dict[str, Any]:
    """The agent config of ``conf/agent/<preset>.yaml``, composed with its defaults.

    Raises:
        ConfigError: No such preset.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from hpo.paths import config_dir

    conf = Path(config_dir())
    presets = sorted(p.stem for p in (conf / "agent").glob("*.yaml"))
    if preset not in presets:
        raise ConfigError(f"agent preset {preset!r} is unknown: use one of {', '.join(presets)}")
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name=f"agent/{preset}")
    except HydraException as exc:
        raise ConfigError(f"conf/agent/{preset}.yaml does not compose: {exc}") from exc
    node = cfg.get("agent", cfg)
    data = OmegaConf.to_container(node, resolve=False)
    assert isinstance(data, dict)
    return {str(k): v for k, v in data.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpo.diagram``: draw the configured agent chain; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m hpo.diagram",
        description="Draw the configured agent chain as a Mermaid flowchart.",
    )
    parser.add_argument("--agent", default="auto",
                        help="agent preset of conf/agent/ (default: auto)")
    parser.add_argument("--chain", default=None,
                        help="override the preset's chain: one of " + ", ".join(CHAIN_NAMES)
                        + ", or stages separated by commas (analyst,planner,checker)")
    parser.add_argument("--researcher", action="store_true", help="add the researcher role")
    parser.add_argument("--fallback", default="TPESampler",
                        help="name of the fallback sampler (default: TPESampler)")
    parser.add_argument("--out", default=None, help="write the Mermaid text to this .mmd file")
    parser.add_argument("--png", default=None,
                        help="render a PNG with mmdc (else write the .mmd beside it)")
    args = parser.parse_args(argv)
    try:
        cfg = load_agent_config(args.agent)
        if args.chain:
            cfg["chain"] = [s for s in args.chain.split(",") if s.strip()] \
                if "," in args.chain else args.chain
        if args.researcher:
            cfg["researcher"] = True
        text = chain_mermaid(cfg, fallback_sampler=args.fallback)
    except HPOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None and args.png is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted; no error at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    mmd = Path(args.out) if args.out else Path(args.png).with_suffix(".mmd")
    mmd.parent.mkdir(parents=True, exist_ok=True)
    mmd.write_text(text, encoding="utf-8")
    print(f"wrote {mmd}")
    if args.png is None:
        return 0
    renderer = shutil.which(MMDC)
    if renderer is None:
        print(f"no PNG: the Mermaid CLI ({MMDC}) is not installed; render {mmd} with "
              f"`npx -p @mermaid-js/mermaid-cli mmdc -i {mmd} -o {args.png}` or paste it "
              "into https://mermaid.live")
        return 0
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([renderer, "-i", str(mmd), "-o", str(png)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        print(f"error: {MMDC} failed ({proc.returncode}): {tail[-1] if tail else ''}",
              file=sys.stderr)
        return 1
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
