"""Benchmark 3: LLM calls per trial with k parallel slots (batching), against the fake LLM server.

Two drivers, each with the real ``LLMSampler(batch_size=k)`` and the real chain
(``build_chain({"provider": "openai", ...})``) whose ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
point at a loopback ``FakeLLMServer`` started here:

- ``hpo sweeper``: the no-op Hydra app with an ``agent`` node (``apps/noop/hpo_llm.yaml``),
  ``hydra.sweeper.n_jobs=k``, in-process launcher, SQLite storage (read back afterwards);
- ``study.optimize``: ``n_jobs=k`` threads, an objective that sleeps 5-50 ms.

Requests are counted on the server; ``LLM trials`` are those whose ``hpo:source`` is an LLM
source (the first trial is the baseline: config defaults, no call). Usage::

    python benchmarks/bench_llm_calls.py                 # k = 1, 4, 8; 48 trials; 2 chains
    python benchmarks/bench_llm_calls.py --quick         # k = 1, 4; 12 trials
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    NOOP_APP,
    Table,
    base_parser,
    clean_env,
    header,
    parse_ints,
    progress,
    run,
    setup_logging,
    write_json,
)

SEARCH = ("x=interval(-5, 5)", "y=range(0, 3)", "kind=choice(a, b)")
LLM_SOURCES = ("llm", "repaired", "clamped")


def _counts(trials: list[Any]) -> tuple[Counter[str], int]:
    sources = Counter(str(t.user_attrs.get("hpo:source")) for t in trials)
    calls = len({t.user_attrs["hpo:llm_call"] for t in trials if "hpo:llm_call" in t.user_attrs})
    return sources, calls


def via_sweeper(k: int, n: int, chain: str, server: Any, work: Path) -> dict[str, Any]:
    import optuna

    db = work / f"sweep_k{k}_{chain}.db"
    env = clean_env(
        BENCH_SWEEP_DIR=str(work / "multirun"),
        OPENAI_BASE_URL=server.openai_base_url,
        OPENAI_API_KEY="sk-bench-not-a-secret",
    )
    before = len(server.requests)
    run([sys.executable, NOOP_APP, "--config-name", "hpo_llm", "-m", *SEARCH,
         f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.n_jobs={k}", "hydra/launcher=basic",
         f"hydra.sweeper.storage=sqlite:///{db}", f"agent.chain={chain}",
         # calls per trial of the LLM's own trials: the bandit that cuts a poor LLM is off
         "++agent.adaptive_share=false"], cwd=work, env=env)
    requests = len(server.requests) - before
    study = optuna.load_study(study_name="noop_llm", storage=f"sqlite:///{db}")
    sources, calls = _counts(study.trials)
    return {"trials": len(study.trials), "requests": requests, "calls": calls, "sources": sources}


def via_optimize(k: int, n: int, chain_name: str, server: Any) -> dict[str, Any]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hpo.agents.factory import build_chain
    from hpo.samplers import LLMSampler
    from hpo.space import ParamSpec

    specs = [
        ParamSpec(name="x", distribution=FloatDistribution(-5, 5), default=0.0),
        ParamSpec(name="y", distribution=IntDistribution(0, 3), default=0),
        ParamSpec(name="kind", distribution=CategoricalDistribution(["a", "b"]), default="a"),
    ]
    chain = build_chain({"provider": "openai", "model": "gpt-4o-mini", "chain": chain_name,
                         "max_retries": 0, "timeout_s": 60, "dump_prompts": False})
    sampler = LLMSampler(chain=chain, search_space=specs, batch_size=k, seed=0,
                         objective_names=["objective"], adaptive_share=False)
    study = optuna.create_study(sampler=sampler)
    rng = random.Random(k)
    delays = [rng.uniform(0.005, 0.05) for _ in range(n)]

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        y = trial.suggest_int("y", 0, 3)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        time.sleep(delays[trial.number % n])
        return (x - 2.0) ** 2 + y + (1 if kind == "b" else 0)

    before = len(server.requests)
    study.optimize(objective, n_trials=n, n_jobs=k)
    requests = len(server.requests) - before
    sources, calls = _counts(study.trials)
    return {"trials": len(study.trials), "requests": requests, "calls": calls, "sources": sources}


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--k", type=parse_ints, default=None,
                   help="comma-separated slot counts (default 1,4,8; --quick: 1,4)")
    p.add_argument("--trials", type=int, default=None, help="trials per run (default 48)")
    p.add_argument("--chains", default="single,diagnose",
                   help="comma-separated chains (single, diagnose, consultants, planner)")
    p.add_argument("--drivers", default="sweeper,optimize",
                   help="comma-separated: sweeper (hpo's Hydra sweeper), optimize")
    args = p.parse_args()
    setup_logging(args.verbose)
    header("LLM calls per trial with k parallel slots", args)
    ks = args.k or ([1, 4] if args.quick else [1, 4, 8])
    n = args.trials or (12 if args.quick else 48)
    chains = [c.strip() for c in args.chains.split(",") if c.strip()]
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]

    import optuna

    from hpo.testing.fake_llm import FakeLLMServer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.INFO if args.verbose else logging.ERROR)
    table = Table(
        "LLM calls per trial with k slots",
        ["driver", "chain", "k", "trials", "LLM trials", "fallback/baseline", "chain calls",
         "calls/trial", "target 1/k+0.05", "met", "requests", "requests/trial"],
    )
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp, FakeLLMServer(seed=0) as server:
        saved = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
        os.environ["OPENAI_BASE_URL"] = server.openai_base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-secret"
        try:
            for driver in drivers:
                for chain in chains:
                    for k in ks:
                        progress(f"{driver}, chain {chain}, k={k}, {n} trials")
                        if driver == "sweeper":
                            r = via_sweeper(k, n, chain, server, Path(tmp))
                        elif driver == "optimize":
                            r = via_optimize(k, n, chain, server)
                        else:
                            raise SystemExit(f"--drivers: {driver!r} is unknown: use sweeper "
                                             "or optimize")
                        llm = sum(r["sources"][s] for s in LLM_SOURCES)
                        other = ", ".join(f"{s} {c}" for s, c in sorted(r["sources"].items())
                                          if s not in LLM_SOURCES) or "-"
                        per = r["calls"] / r["trials"]
                        target = 1 / k + 0.05
                        table.add("hpo sweeper" if driver == "sweeper" else "study.optimize",
                                  chain, k, r["trials"], llm, other, r["calls"], per, target,
                                  per <= target, r["requests"], r["requests"] / r["trials"])
        finally:
            for key, v in saved.items():
                if v is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = v
    table.notes += [
        "chain calls: distinct hpo:llm_call ids on the trials (one chain run per batch of k "
        "proposals); requests: HTTP requests the fake server received, all roles (the diagnose "
        "chain asks an analyst, then the proposer: 2 per call unless a rule verdict skips the "
        "analyst)",
        "the sweeper runs jobs in-process (hydra/launcher=basic), so its k slots take turns; "
        "the asks still see k slots in flight",
    ]
    table.print()
    write_json(args.json, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
