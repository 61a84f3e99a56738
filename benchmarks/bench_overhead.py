"""Benchmark 1: per-trial overhead of a full sweep, hpo against hydra-optuna-sweeper and Optuna.

The same no-op Hydra app (``benchmarks/apps/noop``) is swept with TPE and the in-process
launcher (``hydra/launcher=basic``), LLM off (the app has no ``agent`` node):

- ``hpo``: hpo's sweeper, in-memory storage and SQLite; and in memory with
  ``hydra.sweeper.fast_inprocess=false`` (Hydra composes every trial's config from scratch);
- ``hydra-optuna-sweeper``: the peer (1.3, Optuna 2.10) from its own venv
  (``benchmarks/.venv-peer``, created on first use), in-memory storage;
- ``optuna``: bare ``study.optimize`` with the same TPE on the same space: the floor
  (Optuna 5 in memory and on SQLite; Optuna 2.10 of the peer venv in memory).

Per trial = the median gap between the starts of consecutive jobs, in wall time and in the
sweep process's CPU time (steady state: process start-up and the first composition are
excluded, reported apart as "start-up"). CPU time barely moves when other processes share the
machine; wall time does, so each configuration runs ``--repeats`` times, interleaved, and the
run with the lowest median wall gap is kept. On SQLite the SQL statements and commits per
trial are counted too (a SQLAlchemy event listener on ``Engine`` in the sweep's process: the
no-op app with ``BENCH_SQL``, ``bare_optuna.py``), as the mean over the trials after the
sampler's 10 start-up trials. The load average is printed with every run and in the table's
notes. Usage::

    python benchmarks/bench_overhead.py                  # 200 (x3) and 2000 trials
    python benchmarks/bench_overhead.py --quick          # 20 and 60 trials, a smoke run
    python benchmarks/bench_overhead.py --trials 200 --no-peer
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    NOOP_APP,
    Table,
    base_parser,
    clean_env,
    ensure_peer_venv,
    header,
    parse_ints,
    peer_versions,
    per_trial_s,
    progress,
    read_stamps,
    run,
    setup_logging,
    write_json,
)

SEARCH = ("x=interval(-5, 5)", "y=range(0, 3)", "kind=choice(a, b)")
BARE = BENCH_DIR / "apps" / "bare_optuna.py"
TARGET_VS_PEER = 0.4  # hpo ms/trial in memory <= 0.4x hydra-optuna-sweeper's
TARGET_GROWTH_SLACK = 0.1  # hpo's growth (ms) first -> last size <= bare TPE's growth + 10 %
TARGET_VS_BARE_SQLITE = 1.5  # hpo ms/trial on SQLite <= 1.5x bare Optuna's on SQLite
TARGET_SQL_EXTRA = 5  # hpo SQL statements per trial <= bare Optuna's + 5
SQL_SKIP = 10  # trials left out of the SQL counts: TPE's random start-up


@dataclass
class Result:
    runner: str
    storage: str
    n_trials: int
    wall_s: float  # the process (optuna rows: create_study + optimize)
    startup_s: float  # process start to the first job
    median_s: float  # median wall gap between job starts
    mean_s: float  # mean wall gap between job starts (the throughput)
    tail_s: float  # median wall gap over the last 10 % of the run
    cpu_s: float  # median gap of the process CPU time between job starts
    sql: float | None = None  # SQL statements per trial (SQLite)
    commits: float | None = None  # commits per trial (SQLite)
    load: float = 0.0  # 1-minute load average when the run ended
    starts: list[float] = field(default_factory=list, repr=False)  # job starts (wall)
    cpus: list[float] = field(default_factory=list, repr=False)  # process CPU at job starts

    def window_s(self, lo: int, hi: int, *, cpu: bool = False) -> float:
        """Median gap between job starts ``lo``..``hi`` of this run (wall, or CPU time)."""
        return per_trial_s((self.cpus if cpu else self.starts)[lo:hi])


def _result(runner: str, storage: str, n: int, wall: float, t0: float, starts: list[float],
            cpu: list[float], sql: list[tuple[int, int]] | None = None) -> Result:
    if len(starts) != n:
        raise RuntimeError(f"{runner} ({storage}) ran {len(starts)} of {n} trials")
    per_sql = per_commit = None
    if sql and len(sql) > SQL_SKIP + 1 and sql[-1][0] > 0:
        k = len(sql) - 1 - SQL_SKIP
        per_sql = (sql[-1][0] - sql[SQL_SKIP][0]) / k
        per_commit = (sql[-1][1] - sql[SQL_SKIP][1]) / k
    return Result(runner, storage, n, wall, starts[0] - t0, per_trial_s(starts),
                  per_trial_s(starts, median=False), per_trial_s(starts, tail=0.1),
                  per_trial_s(cpu), per_sql, per_commit, os.getloadavg()[0], starts, cpu)


def bare_optuna(py: Path, n: int, storage: str, work: Path) -> Result:
    """``study.optimize`` in a fresh process of ``py``; wall = create_study + optimize."""
    t0 = time.time()
    ran = run([py, BARE, str(n), storage], cwd=work, env=clean_env())
    doc = json.loads(ran.proc.stdout.strip().splitlines()[-1])
    label = "memory" if storage == "memory" else "sqlite"
    sql = [(int(a), int(b)) for a, b in doc.get("sql", [])]
    return _result(f"optuna {doc['optuna']}", label, n, doc["wall_s"], t0, doc["starts"],
                   doc["cpu"], sql)


def sweep(py: Path, runner: str, n: int, storage: str, work: Path, *,
          config: str = "hpo", extra: tuple[str, ...] = ()) -> Result:
    """A multirun of the no-op app; wall and CPU time of the whole process."""
    stamps, sql_file = work / "stamps.txt", work / "sql.txt"
    stamps.unlink(missing_ok=True)
    sql_file.unlink(missing_ok=True)
    shutil.rmtree(work / "multirun", ignore_errors=True)
    env = clean_env(BENCH_STAMPS=str(stamps), BENCH_SWEEP_DIR=str(work / "multirun"))
    if storage.startswith("sqlite"):
        env["BENCH_SQL"] = str(sql_file)
    cmd: list[str | Path] = [py, NOOP_APP, "--config-name", config, "-m", *SEARCH,
                             f"hydra.sweeper.n_trials={n}", "hydra/launcher=basic"]
    if config == "hpo":
        cmd.append(f"hydra.sweeper.storage={storage}")
    cmd += extra
    t0 = time.time()
    ran = run(cmd, cwd=work, env=env)
    stamps_ = read_stamps(stamps)
    label = "sqlite" if storage.startswith("sqlite") else "memory"
    return _result(runner, label, n, ran.wall_s, t0, [s.start for s in stamps_],
                   [s.cpu for s in stamps_], _read_sql(sql_file))


def _read_sql(path: Path) -> list[tuple[int, int]]:
    """(statements, commits) so far at each job's start, by job number (``BENCH_SQL``)."""
    if not path.exists():
        return []
    rows = sorted(tuple(int(x) for x in ln.split()) for ln in path.read_text().splitlines())
    return [(r[1], r[2]) for r in rows]


def _plan(n: int, work: Path, me: Path, peer_py: Path | None, slow_path: bool
          ) -> list[tuple[str, Callable[..., Result], tuple[Any, ...], dict[str, Any]]]:
    plan: list[tuple[str, Callable[..., Result], tuple[Any, ...], dict[str, Any]]] = [
        ("optuna, memory", bare_optuna, (me, n, "memory", work), {}),
        ("optuna, sqlite", bare_optuna, (me, n, f"sqlite:///{work / 'bare.db'}", work), {}),
    ]
    if peer_py is not None:
        plan.append(("optuna 2.10, memory", bare_optuna, (peer_py, n, "memory", work), {}))
    plan += [
        ("hpo, memory", sweep, (me, "hpo", n, "memory", work), {}),
        ("hpo, sqlite", sweep, (me, "hpo", n, f"sqlite:///{work / 'hpo.db'}", work), {}),
    ]
    if slow_path:
        plan.append(("hpo fast_inprocess=false, memory", sweep,
                     (me, "hpo fast_inprocess=false", n, "memory", work),
                     {"extra": ("hydra.sweeper.fast_inprocess=false",)}))
    if peer_py is not None:
        plan.append(("hydra-optuna-sweeper, memory", sweep,
                     (peer_py, "hydra-optuna-sweeper", n, "memory", work), {"config": "peer"}))
    return plan


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=parse_ints, default=None,
                   help="comma-separated trial counts (default 200,2000; --quick: 20,60)")
    p.add_argument("--no-peer", action="store_true",
                   help="skip hydra-optuna-sweeper and Optuna 2.10 (no peer venv needed)")
    p.add_argument("--peer-venv", type=Path, default=BENCH_DIR / ".venv-peer",
                   help="where the peer venv lives (created when missing)")
    p.add_argument("--no-slow-path", action="store_true",
                   help="skip the row with hydra.sweeper.fast_inprocess=false (Hydra's own "
                        "composition of every trial)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per configuration, interleaved; the best is kept "
                        "(default 3 up to 500 trials, 1 above)")
    args = p.parse_args()
    setup_logging(args.verbose)
    header("Per-trial overhead of a sweep (no-op task, TPE, in-process launcher)", args)
    sizes = args.trials or ([20, 60] if args.quick else [200, 2000])
    if args.quick and args.repeats is None:
        args.repeats = 1

    peer_py = None
    if not args.no_peer:
        peer_py = ensure_peer_venv(args.peer_venv)
        print(f"- peer venv: {peer_versions(peer_py)}\n", flush=True)
    me = Path(sys.executable)

    results: list[Result] = []
    for n in sizes:
        repeats = args.repeats or (3 if n <= 500 else 1)
        best: dict[str, Result] = {}
        with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
            plan = _plan(n, Path(tmp), me, peer_py, not args.no_slow_path)
            for rep in range(repeats):
                for label, fn, fargs, fkw in plan:
                    progress(f"{n} trials: {label}, run {rep + 1}/{repeats} "
                             f"(load avg {os.getloadavg()[0]:.1f})")
                    res = fn(*fargs, **fkw)
                    progress(f"  {res.median_s * 1e3:.1f} ms/trial (mean {res.mean_s * 1e3:.1f}),"
                             f" CPU {res.cpu_s * 1e3:.1f} ms/trial, wall {res.wall_s:.1f} s"
                             + (f", {res.sql:.1f} SQL/trial" if res.sql is not None else ""))
                    if label not in best or res.median_s < best[label].median_s:
                        best[label] = res
                    for db in Path(tmp).glob("*.db*"):  # with SQLite's -wal and -shm files
                        db.unlink()
        results += best.values()

    table = Table(
        "Per-trial overhead",
        ["runner", "storage", "trials", "wall (s)", "start-up (s)", "ms/trial",
         "mean ms/trial", "ms/trial, last 10%", "CPU ms/trial", "SQL/trial", "commits/trial",
         "vs peer (wall)", "vs peer (CPU)", f"vs {sizes[0]} trials", "load"],
    )
    peer = {r.n_trials: r for r in results if r.runner == "hydra-optuna-sweeper"}
    first = {(r.runner, r.storage): r for r in results if r.n_trials == sizes[0]}
    for r in results:
        vs_wall = vs_cpu = None
        if r.n_trials in peer and not r.runner.startswith("optuna"):
            vs_wall = r.median_s / peer[r.n_trials].median_s
            vs_cpu = r.cpu_s / peer[r.n_trials].cpu_s
        base = first.get((r.runner, r.storage))
        growth = r.median_s / base.median_s if base is not None and base is not r else None
        table.add(r.runner, r.storage, r.n_trials, r.wall_s, r.startup_s, r.median_s * 1e3,
                  r.mean_s * 1e3, r.tail_s * 1e3, r.cpu_s * 1e3, r.sql, r.commits, vs_wall,
                  vs_cpu, growth, r.load)
    loads = [r.load for r in results]
    table.notes += [
        "ms/trial: median wall gap between consecutive job starts (ask + launch + job + tell); "
        "mean ms/trial: the throughput; CPU ms/trial: median gap of the sweep process's CPU "
        "time; start-up: process start to the first job; optuna rows: wall = create + optimize",
        f"SQL/trial, commits/trial: SQLAlchemy statements and commits per trial after the first "
        f"{SQL_SKIP} trials (SQLite rows)",
        "best of the repeats by ms/trial (3 runs up to 500 trials, 1 above, unless --repeats); "
        f"load: 1-minute load average at the end of the kept run (min {min(loads):.1f}, "
        f"max {max(loads):.1f} over the kept runs)",
    ]
    table.print()
    _targets(results, sizes).print()  # on stdout only: the JSON keeps the one table it has
    write_json(args.json, [table])
    return 0


def _targets(results: list[Result], sizes: list[int]) -> Table:
    """Each target of docs/benchmarks.md, with its figures and whether this run met it."""
    by = {(r.runner, r.storage, r.n_trials): r for r in results}
    bare = next((r.runner for r in results if r.runner.startswith("optuna 5")), "optuna")
    table = Table("Targets", ["target", "figures", "met"])
    for n in sizes:
        hpo, peer = by.get(("hpo", "memory", n)), by.get(("hydra-optuna-sweeper", "memory", n))
        if hpo and peer:
            ratio = hpo.median_s / peer.median_s
            table.add(f"in memory, {n} trials: hpo <= {TARGET_VS_PEER}x hydra-optuna-sweeper",
                      f"{hpo.median_s * 1e3:.1f} vs {peer.median_s * 1e3:.1f} ms = {ratio:.2f}x",
                      ratio <= TARGET_VS_PEER)
        hpo_db, bare_db = by.get(("hpo", "sqlite", n)), by.get((bare, "sqlite", n))
        if hpo_db and bare_db:
            ratio = hpo_db.median_s / bare_db.median_s
            table.add(f"SQLite, {n} trials: hpo <= {TARGET_VS_BARE_SQLITE}x bare Optuna",
                      f"{hpo_db.median_s * 1e3:.1f} vs {bare_db.median_s * 1e3:.1f} ms = "
                      f"{ratio:.2f}x", ratio <= TARGET_VS_BARE_SQLITE)
            if hpo_db.sql is not None and bare_db.sql is not None:
                extra = hpo_db.sql - bare_db.sql
                table.add(f"SQLite, {n} trials: SQL statements <= bare Optuna's + "
                          f"{TARGET_SQL_EXTRA}",
                          f"{hpo_db.sql:.1f} vs {bare_db.sql:.1f} = +{extra:.1f} (commits "
                          f"{hpo_db.commits:.1f} vs {bare_db.commits:.1f})",
                          extra <= TARGET_SQL_EXTRA)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        h, b = by.get(("hpo", "memory", hi)), by.get((bare, "memory", hi))
        if h and b:  # in one run each: the gaps near trial `lo` against the last 10 %
            near, last = (lo // 2, lo), (hi - hi // 10, hi)
            growth = {}
            for name, r in (("hpo", h), ("bare TPE", b)):
                growth[name] = tuple(
                    (r.window_s(*last, cpu=cpu) - r.window_s(*near, cpu=cpu)) * 1e3
                    for cpu in (False, True))
            (hw, hc), (bw, bc) = growth["hpo"], growth["bare TPE"]
            slack = 1 + TARGET_GROWTH_SLACK
            table.add(f"in memory, growth within the {hi}-trial run (trials {near[0]}-{near[1]} "
                      f"-> last 10%): hpo's <= bare TPE's + {TARGET_GROWTH_SLACK:.0%}",
                      f"wall: hpo +{hw:.1f} ms, bare TPE +{bw:.1f} ms; CPU: hpo +{hc:.1f} ms, "
                      f"bare TPE +{bc:.1f} ms", hw <= bw * slack)
        pairs = [(by.get(("hpo", "memory", lo)), by.get(("hpo", "memory", hi))),
                 (by.get((bare, "memory", lo)), by.get((bare, "memory", hi)))]
        (h0, h1), (b0, b1) = pairs
        if h0 and h1 and b0 and b1:
            dh, db = (h1.median_s - h0.median_s) * 1e3, (b1.median_s - b0.median_s) * 1e3
            allowed = db * (1 + TARGET_GROWTH_SLACK)
            table.add(f"in memory, growth {lo} -> {hi} trials (two runs): hpo's <= bare "
                      f"TPE's + {TARGET_GROWTH_SLACK:.0%}",
                      f"hpo +{dh:.1f} ms ({h1.median_s / h0.median_s:.2f}x), bare TPE "
                      f"+{db:.1f} ms ({b1.median_s / b0.median_s:.2f}x)", dh <= allowed)
    return table



if __name__ == "__main__":
    sys.exit(main())
