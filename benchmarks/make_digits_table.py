"""Build the table of the tabulated digits benchmark by really training hpo's default task.

Each configuration of the grid in ``benchmarks/quality/tabular.py`` (the default search space
``conf/search_space/default.yaml`` on a grid) is trained as ``python -m hpo.train`` trains it,
in-process to save the start-up: the config is composed from ``conf/train.yaml`` with the
configuration's overrides, and :func:`hpo.train.fit` runs it (data module, ClassifierModule,
Lightning Trainer, early stopping, best checkpoint) inside a real Optuna trial, so that
``OptunaReporter`` reports ``val/acc`` per epoch and stores its ``curves`` and ``per_class``
user attrs exactly as in a sweep. Those are what the table keeps, with the objective.

Resumable: every finished configuration is appended to ``digits_mlp.partial.jsonl`` at once;
a rerun skips what is there. When all are done the table is written compressed
(``benchmarks/data/digits_mlp.jsonl.gz``) and the partial file removed. Usage::

    nice -n 10 python benchmarks/make_digits_table.py            # 648 configs, 2 workers
    python benchmarks/make_digits_table.py --limit 4 --out /tmp/t.jsonl.gz   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine_info, progress
from quality.tabular import (
    DEFAULTS,
    FORMAT,
    GRID,
    TABLE_PATH,
    Row,
    grid_points,
    point,
    snap,
)

STUDY = "digits-table"
STORAGE_KEY = "bench-digits-table"


def overrides(params: dict[str, Any]) -> list[str]:
    """The command-line overrides of one configuration (the optimizer group first)."""
    out = [f"optimizer={params['optimizer']}"]
    out += [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}"
            for k, v in params.items() if k != "optimizer"]
    return [*out, "agent=none", "trainer.accelerator=cpu"]


def _init_worker(threads: int) -> None:
    import logging
    import warnings

    import torch
    from hydra import initialize_config_dir

    from hpo.train import config_dir

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.ERROR)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "hpo",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- fit() prints the objective per run
    initialize_config_dir(config_dir=config_dir(), version_base="1.3").__enter__()
    # curves.png is an audit artifact, deleted with the run's folder here, and its drawing
    # costs ~20 % of a configuration: the table is built without it (the values are the same)
    from hpo.callbacks.metrics_writer import MetricsWriter

    MetricsWriter._write_plot = lambda self: None


def train_one(params: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration in a real Optuna trial; return its table row as JSON."""
    import optuna
    from hydra import compose

    from hpo import trial_context
    from hpo.errors import first_line
    from hpo.train import fit

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    trial = study.ask()
    trial_context.register_live_storage(STORAGE_KEY, storage)
    ctx = trial_context.TrialContext(storage=STORAGE_KEY, study_name=STUDY,
                                     trial_number=trial.number, trial_id=trial._trial_id)
    cfg = compose(config_name="train", overrides=overrides(params))
    old_env = {k: os.environ.get(k) for k in ctx.env()}
    old_cwd = os.getcwd()
    value: float | None = None
    error: str | None = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpo-digits-") as tmp:
        os.environ.update(ctx.env())
        os.chdir(tmp)  # the run's outputs (checkpoints, metrics.csv) land in a fresh folder
        try:
            result = fit(cfg)
            value = float(result if isinstance(result, float) else result[0])
        except Exception as exc:  # a diverged or broken config is a row too (a failed trial)
            error = first_line(exc)
        finally:
            os.chdir(old_cwd)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    fit_s = time.perf_counter() - t0
    frozen = study.trials[0]
    steps = sorted(frozen.intermediate_values)
    row = Row(
        params=params,
        value=value if value is None or value == value else None,
        intermediate=[float(f"{frozen.intermediate_values[s]:.6g}") for s in steps],
        curves=dict(frozen.user_attrs.get("curves") or {}),
        per_class=frozen.user_attrs.get("per_class"),
        error=error,
        fit_s=fit_s,
    )
    return row.to_json()


def _read_partial(path: Path) -> dict[tuple[int, ...], dict[str, Any]]:
    done: dict[tuple[int, ...], dict[str, Any]] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by an interruption: train it again
                continue
            key = snap(row["params"])
            if point(key) == row["params"]:  # rows of another grid are left out
                done[key] = row
    return done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TABLE_PATH, help="the table to write")
    p.add_argument("--workers", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--limit", type=int, default=None,
                   help="train at most this many configurations (a smoke run; the table is "
                        "written only when the grid is complete)")
    args = p.parse_args()
    if args.workers < 1 or args.threads < 1:
        raise SystemExit("--workers and --threads must be >= 1: use e.g. --workers 2")
    partial = args.out.with_name(args.out.name.replace(".jsonl.gz", ".partial.jsonl"))
    points = list(grid_points())
    done = _read_partial(partial)
    todo = [pt for pt in points if snap(pt) not in done]
    # the default configuration first: a smoke run shows the baseline
    todo.sort(key=lambda pt: pt != DEFAULTS)
    if args.limit is not None:
        todo = todo[: args.limit]
    progress(f"{len(points)} grid points, {len(done)} done, {len(todo)} to train now "
             f"({args.workers} workers x {args.threads} threads); partial file {partial}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(args.threads,)) as pool, \
            partial.open("a", encoding="utf-8") as out:
        for i, row in enumerate(pool.imap_unordered(train_one, todo), start=1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            done[snap(row["params"])] = row
            if i % 10 == 0 or i == len(todo):
                rate = (time.perf_counter() - t0) / i
                progress(f"{len(done)}/{len(points)} done; {rate:.2f} s/config; "
                         f"~{rate * (len(todo) - i) / 60:.0f} min left")
    if len(done) < len(points):
        progress(f"{len(points) - len(done)} configurations left: rerun to continue")
        return 0
    header = {
        "format": FORMAT,
        "task": "hpo's default task: `python -m hpo.train` (model=mlp data=digits, 20 epochs at "
                "most, early stopping on val/loss, objective val/acc of the best checkpoint)",
        "grid": {k: list(v) for k, v in GRID.items()},
        "defaults": DEFAULTS,
        "lookup": "snap each parameter to the nearest grid value (log space for log params)",
        "command": "python benchmarks/make_digits_table.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    rows = [done[snap(pt)] for pt in points]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(json.dumps(header) + "\n")
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    tmp.replace(args.out)
    partial.unlink()
    progress(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
