"""Bare ``study.optimize`` with TPE on the no-op app's search space: the floor of a trial's cost.

Runs under hpo's venv (Optuna 5) and the peer's (Optuna 2.10). Prints one JSON line
``{"wall_s", "starts", "cpu", "optuna"}``: per trial the wall clock and the process CPU time at
its start. Usage: ``python bare_optuna.py N_TRIALS [STORAGE_URL]``.
"""

from __future__ import annotations

import json
import sys
import time

import optuna


def main() -> None:
    n_trials = int(sys.argv[1])
    storage = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "memory" else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    starts: list[float] = []
    cpu: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        starts.append(time.time())
        cpu.append(time.process_time())
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_int("y", 0, 3)
        kind = trial.suggest_categorical("kind", ["a", "b"])
        return (x - 2.0) ** 2 + y + (1 if kind == "b" else 0)

    t0 = time.perf_counter()
    study = optuna.create_study(
        study_name="noop", storage=storage, sampler=optuna.samplers.TPESampler(seed=0)
    )
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "starts": starts, "cpu": cpu, "optuna": optuna.__version__}))


if __name__ == "__main__":
    main()
