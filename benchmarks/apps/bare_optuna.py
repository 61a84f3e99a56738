"""Bare ``study.optimize`` with TPE on the no-op app's search space: the floor of a trial's cost.

Runs under hpo's venv (Optuna 5) and the peer's (Optuna 2.10). Prints one JSON line
``{"wall_s", "starts", "cpu", "sql", "optuna"}``: per trial the wall clock, the process CPU time
and the SQL statements and commits run so far (a SQLAlchemy event listener on ``Engine``) at its
start. Usage: ``python bare_optuna.py N_TRIALS [STORAGE_URL]``.
"""

from __future__ import annotations

import json
import sys
import time

import optuna
from sqlalchemy import event
from sqlalchemy.engine import Engine

_SQL = [0, 0]  # statements, commits


def _statement(*_: object) -> None:
    _SQL[0] += 1


def _commit(*_: object) -> None:
    _SQL[1] += 1


def main() -> None:
    event.listen(Engine, "before_cursor_execute", _statement)
    event.listen(Engine, "commit", _commit)
    n_trials = int(sys.argv[1])
    storage = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "memory" else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    starts: list[float] = []
    cpu: list[float] = []
    sql: list[list[int]] = []

    def objective(trial: optuna.Trial) -> float:
        starts.append(time.time())
        cpu.append(time.process_time())
        sql.append(list(_SQL))
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
    print(json.dumps({"wall_s": wall, "starts": starts, "cpu": cpu, "sql": sql,
                      "optuna": optuna.__version__}))


if __name__ == "__main__":
    main()
