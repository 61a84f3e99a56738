"""hpo's LLMSampler from plain Python: no Hydra, a define-by-run Optuna objective.

Run it with an API key in the environment (or in ./.env)::

    export ANTHROPIC_API_KEY=...     # or OPENAI_API_KEY, DEEPSEEK_API_KEY, ...
    python examples/python_api.py

Without any key it still runs: ``build_chain`` logs a warning and returns None, and every trial
comes from the fallback sampler (TPE). The first trials always come from the fallback too: in
define-by-run mode the sampler learns the search space from the finished trials.

Where the LLM's proposals went, and why, is in each trial's user attrs (``hpo:source``,
``hpo:rationale``, ``hpo:tokens_in`` ...), e.g. ``optuna-dashboard sqlite:///example.db``.
"""

from __future__ import annotations

import argparse
import logging
import math

import optuna

from hpo.agents import build_chain
from hpo.samplers import LLMSampler


def objective(trial: optuna.Trial) -> float:
    """A toy landscape: a shifted quadratic bowl with a categorical offset and a log-scale term."""
    x = trial.suggest_float("x", -5.0, 5.0)
    y = trial.suggest_int("y", -3, 3)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    offset = {"a": 0.5, "b": 0.0, "c": 1.0}[kind]
    return (x - 1.2) ** 2 + (y + 1) ** 2 + (math.log10(lr) + 3) ** 2 + offset


def main(n_trials: int = 20, storage: str | None = None, seed: int | None = 0) -> optuna.Study:
    """Run the toy study and print the best trial.

    Args:
        n_trials: How many trials to run.
        storage: An Optuna storage URL (e.g. ``sqlite:///example.db``); None keeps it in memory.
        seed: Seed of the sampler (and its TPE fallback).

    Returns:
        The finished study.
    """
    chain = build_chain({"provider": "auto", "dump_prompts": False})  # None without a key
    sampler = LLMSampler(
        chain=chain,
        seed=seed,
        batch_size=2,
        objective_names=["loss"],
        context={"task": "a toy function of four parameters; lower is better"},
    )
    study = optuna.create_study(sampler=sampler, storage=storage, direction="minimize")
    study.optimize(objective, n_trials=n_trials)

    best = study.best_trial
    print(f"best value {best.value:.4f} at {best.params}")
    sources: dict[str, int] = {}
    for t in study.trials:
        source = str(t.user_attrs.get("hpo:source", "?"))
        sources[source] = sources.get(source, 0) + 1
    print("trials by source:", dict(sorted(sources.items())))
    return study


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--storage", default=None, help="e.g. sqlite:///example.db")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main(n_trials=args.n_trials, storage=args.storage)
