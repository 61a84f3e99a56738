"""A no-op Hydra app for the sweeper benchmarks; runs under hpo's venv and the peer's.

It imports nothing of hpo, so hydra-optuna-sweeper can drive it from its own venv. Environment:

- ``BENCH_STAMPS``: a file; each job appends ``<job num> <start> <end> <cpu>``: wall clock
  (``time.time()``) and the CPU time of the process so far (``time.process_time()``, all
  threads) at the job's start; in-process jobs thus show the sweep's CPU per trial.
- ``BENCH_DURATIONS``: comma-separated seconds; job ``n`` sleeps ``durations[n % len]``.
- ``BENCH_SQL``: a file; each job appends ``<job num> <statements> <commits>``: the SQL
  statements and commits every SQLAlchemy engine of this process has run so far (an event
  listener on ``Engine``, installed at import, before the sweeper opens its storage). With the
  in-process launcher that counts the driver's storage traffic per trial.
"""

from __future__ import annotations

import os
import time

import hydra
from omegaconf import DictConfig

_DURATIONS = [float(s) for s in os.environ.get("BENCH_DURATIONS", "").split(",") if s]
_SQL = [0, 0]  # statements, commits


def _count_sql() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def statement(*_: object) -> None:
        _SQL[0] += 1

    def commit(*_: object) -> None:
        _SQL[1] += 1

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)


if os.environ.get("BENCH_SQL"):
    _count_sql()


@hydra.main(version_base="1.3", config_path=".", config_name="hpo")
def main(cfg: DictConfig) -> float:
    start, cpu = time.time(), time.process_time()
    num = int(cfg.job_num)
    if _DURATIONS:
        time.sleep(_DURATIONS[num % len(_DURATIONS)])
    stamps = os.environ.get("BENCH_STAMPS")
    if stamps:
        with open(stamps, "a") as f:
            f.write(f"{num} {start:.6f} {time.time():.6f} {cpu:.6f}\n")
    sql = os.environ.get("BENCH_SQL")
    if sql:
        with open(sql, "a") as f:
            f.write(f"{num} {_SQL[0]} {_SQL[1]}\n")
    return float((cfg.x - 2.0) ** 2 + cfg.y + (1 if cfg.kind == "b" else 0))


if __name__ == "__main__":
    main()
