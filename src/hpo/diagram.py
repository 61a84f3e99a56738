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
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError, HPOError

__all__ = ["CHAIN_NAMES", "chain_mermaid", "load_agent_config", "main"]

CHAIN_NAMES = ("single", "diagnose", "consultants", "planner")
MMDC = "mmdc"


def _label(*lines: str) -> str:
    """A quoted Mermaid node label; quotes and angle brackets in values are escaped."""
    safe = [line.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
            for line in lines if line]
    return '"' + "<br/>".join(safe) + '"'


def _role_model(cfg: Mapping[str, Any], role: str) -> str:
    roles = cfg.get("roles") or {}
    own = roles.get(role) or {}
    if role.startswith("consultant_") and not own:
        own = roles.get("consultant") or {}
    model = own.get("model") if isinstance(own, Mapping) else None
    provider = own.get("provider") if isinstance(own, Mapping) else None
    if model or provider:
        return f"({provider or cfg.get('provider', 'auto')} / {model or 'default model'})"
    return ""


def chain_mermaid(
    agent_cfg: Mapping[str, Any],
    *,
    fallback_sampler: str = "TPESampler",
    storage: str = "Optuna storage",
) -> str:
    """The agent chain configured by ``agent_cfg`` as a Mermaid flowchart.

    Args:
        agent_cfg: A mapping shaped like ``conf/agent/*.yaml`` (``provider``, ``model``,
            ``chain``, ``researcher``, ``consultant_turns``, ``roles``, ``fallback_share``,
            ``budget``, ``cache``).
        fallback_sampler: Name of the classical sampler the LLM sampler falls back to.
        storage: Label of the storage node (e.g. a redacted URL).

    Returns:
        Mermaid source (``flowchart TD ...``), ending with a newline.

    Raises:
        ConfigError: ``chain`` is not one of single, diagnose, consultants, planner.
    """
    provider = str(agent_cfg.get("provider") or "auto")
    chain = str(agent_cfg.get("chain") or "diagnose").strip().lower()
    if chain not in CHAIN_NAMES:
        raise ConfigError(f"agent.chain={chain!r} is unknown: use one of {', '.join(CHAIN_NAMES)}")
    model = str(agent_cfg.get("model") or "preset default model")
    researcher = bool(agent_cfg.get("researcher", False))
    share = float(agent_cfg.get("fallback_share") or 0.0)
    budget = agent_cfg.get("budget") or {}
    caps = [f"{k}={v}" for k, v in budget.items() if v is not None] if isinstance(
        budget, Mapping) else []

    out = ["flowchart TD"]
    add = out.append
    add(f"  storage[({_label(storage, 'trials, params, values, provenance, notes')})]")
    add(f"  trial[{_label('New trial', 'hpo:source, rationale, tokens, cost')}]")
    add(f"  fallback[{_label('Fallback sampler', fallback_sampler)}]")
    add("  trial -->|ask, launch, tell| storage")
    add("  fallback --> trial")
    if provider == "none":
        add(f"  history[{_label('Study history')}]")
        add("  storage --> history --> fallback")
        add(f"  note[{_label('agent.provider=none: no LLM, every trial from the fallback')}]")
        add("  note -.- fallback")
        return "\n".join(out) + "\n"

    history = _label("History view", "best k + recent k trials, curve features, rule verdict")
    add(f"  history[{history}]")
    add("  storage -->|history| history")
    title = f"agent chain: {chain} ({provider} / {model})"
    if agent_cfg.get("cache"):
        title += ", reply cache"
    add(f"  subgraph chain[{_label(title)}]")
    first: str
    last: str
    def role(node: str, title: str, what: str = "") -> None:
        add(f"    {node}[{_label(title, what, _role_model(agent_cfg, node))}]")

    if researcher:
        role("researcher", "Researcher", "remedies")
    if chain == "single":
        role("proposer", "Proposer", "proposals + rationale")
        first = last = "proposer"
        if researcher:
            add("    researcher --> proposer")
            first = "researcher"
    elif chain == "diagnose":
        role("analyst", "Analyst", "diagnosis; skipped on a conclusive rule verdict")
        role("proposer", "Proposer", "proposals + rationale")
        if researcher:
            add("    analyst --> researcher --> proposer")
        else:
            add("    analyst -->|diagnosis| proposer")
        first, last = "analyst", "proposer"
    elif chain == "consultants":
        turns = int(agent_cfg.get("consultant_turns") or 2)
        role("consultant_a", "Consultant A")
        role("consultant_b", "Consultant B")
        role("supervisor", "Supervisor", "decides: proposals + rationale")
        add(f"    consultant_a <-->|{turns} turn{'s' * (turns != 1)}| consultant_b")
        add("    consultant_b --> supervisor")
        first, last = "consultant_a", "supervisor"
        if researcher:
            add("    researcher --> consultant_a")
            first = "researcher"
    else:  # planner
        role("planner", "Planner", "step small / medium / radical, or stop")
        first = last = "planner"
        if researcher:
            add("    researcher --> planner")
            first = "researcher"
    add("  end")
    add(f"  history --> {first}")
    add(f"  checker{{{_label('Checker', 'params vs distributions')}}}")
    add(f"  repair[{_label('Repair', 'one LLM call', _role_model(agent_cfg, 'repair'))}]")
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
    if share > 0:
        add(f"  history -.->|{_edge(f'fallback_share {share:.0%} of trials')}| fallback")
    if chain == "planner":
        add(f"  stop([{_label('Sweep stops')}])")
        add("  planner -.->|stop| stop")
    if provider == "auto":
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
    parser.add_argument("--chain", choices=CHAIN_NAMES, default=None,
                        help="override the preset's chain")
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
            cfg["chain"] = args.chain
        if args.researcher:
            cfg["researcher"] = True
        text = chain_mermaid(cfg, fallback_sampler=args.fallback)
    except HPOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None and args.png is None:
        sys.stdout.write(text)
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
