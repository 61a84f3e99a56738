"""Benchmark 4: asynchronous slots against a batch barrier, with heavy-tailed trial durations.

The no-op app sleeps a duration drawn per trial number from a seeded lognormal distribution
(``--mean`` seconds, ``--sigma``), so every runner sees the same trials; ``--slots`` in parallel:

- ``hpo sweeper, async``: hpo's sweeper with ``hydra/launcher=submitit_local``: one process per
  trial; a slot is refilled as soon as its trial ends;
- ``hydra-optuna-sweeper, barrier``: the peer (its own venv) with the same launcher: it asks
  ``n_jobs`` trials, launches them together and waits for the slowest before the next batch;
- ``simulated``: the same durations scheduled with zero overhead, greedily on free slots
  (async) and in batches (barrier): the bound the durations alone allow.

Throughput = finished trials per wall-second, from the first job's start to the last job's end
(the processes' start-up is listed apart). The default mean is 3 s: submitit_local starts a
Python process per trial (~0.7 s of CPU on a 2-core machine, plus submitit's 1 s result
polling), so with 0.5 s trials the launcher's start-up, not the scheduling, sets the pace.
Usage::

    python benchmarks/bench_async.py                     # 48 trials, 8 slots, mean 3 s
    python benchmarks/bench_async.py --mean 0.5          # short trials: start-up bound
    python benchmarks/bench_async.py --quick             # 8 trials, 4 slots
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    BENCH_DIR,
    NOOP_APP,
    Table,
    base_parser,
    clean_env,
    ensure_peer_venv,
    header,
    peer_versions,
    progress,
    read_stamps,
    run,
    setup_logging,
    write_json,
)

SEARCH = ("x=interval(-5, 5)", "y=range(0, 3)", "kind=choice(a, b)")
TARGET = 1.3


def durations(n: int, *, mean: float, sigma: float, seed: int) -> list[float]:
    """``n`` lognormal durations with the given mean (seconds) and log-space sigma."""
    rng = random.Random(seed)
    mu = math.log(mean) - sigma**2 / 2
    return [round(rng.lognormvariate(mu, sigma), 3) for _ in range(n)]


def simulate_async(ds: list[float], slots: int) -> float:
    """Makespan when each trial starts as soon as a slot is free (in trial order)."""
    free = [0.0] * slots
    end = 0.0
    for d in ds:
        t = heapq.heappop(free)
        heapq.heappush(free, t + d)
        end = max(end, t + d)
    return end


def simulate_barrier(ds: list[float], slots: int) -> float:
    """Makespan when trials run in batches of ``slots`` and each batch waits for its slowest."""
    return sum(max(ds[i:i + slots]) for i in range(0, len(ds), slots))


def sweep(py: Path, config: str, n: int, slots: int, ds: list[float], work: Path
          ) -> dict[str, float]:
    stamps = work / f"stamps-{config}.txt"
    stamps.unlink(missing_ok=True)
    env = clean_env(BENCH_STAMPS=str(stamps), BENCH_SWEEP_DIR=str(work / f"multirun-{config}"),
                    BENCH_DURATIONS=",".join(str(d) for d in ds))
    cmd = [py, NOOP_APP, "--config-name", config, "-m", *SEARCH, f"hydra.sweeper.n_trials={n}",
           f"hydra.sweeper.n_jobs={slots}", "hydra/launcher=submitit_local"]
    if config == "hpo":
        cmd += ["hydra.sweeper.storage=memory", "hydra.sweeper.heartbeat_interval_s=0"]
    t0 = time.time()
    ran = run(cmd, cwd=work, env=env, timeout=1800)
    rows = read_stamps(stamps)
    if len(rows) != n:
        raise RuntimeError(f"{config}: {len(rows)} of {n} trials recorded a run")
    first = min(r.start for r in rows)
    last = max(r.end for r in rows)
    slept = {r.num: r.end - r.start for r in rows}
    return {
        "makespan": last - first,
        "wall": ran.wall_s,
        "startup": first - t0,
        "slept": statistics.fmean(slept.values()),
        "cpu": ran.cpu_s,
    }


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials (default 48; --quick: 8)")
    p.add_argument("--slots", type=int, default=None, help="parallel slots (default 8; quick 4)")
    p.add_argument("--mean", type=float, default=3.0,
                   help="mean trial duration in seconds (default 3: see the module docstring)")
    p.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma (tail weight)")
    p.add_argument("--seed", type=int, default=0, help="seed of the durations")
    p.add_argument("--no-peer", action="store_true",
                   help="skip hydra-optuna-sweeper (no peer venv needed); simulation only")
    p.add_argument("--peer-venv", type=Path, default=BENCH_DIR / ".venv-peer",
                   help="where the peer venv lives (created when missing)")
    args = p.parse_args()
    setup_logging(args.verbose)
    header("Asynchronous slots against a batch barrier (heavy-tailed durations)", args)
    n = args.trials or (8 if args.quick else 48)
    slots = args.slots or (4 if args.quick else 8)
    ds = durations(n, mean=args.mean, sigma=args.sigma, seed=args.seed)
    print(f"- durations: lognormal, mean {statistics.fmean(ds):.2f} s, median "
          f"{statistics.median(ds):.2f} s, max {max(ds):.2f} s, sum {sum(ds):.1f} s "
          f"(seed {args.seed}, sigma {args.sigma})", flush=True)
    peer_py = None
    if not args.no_peer:
        peer_py = ensure_peer_venv(args.peer_venv)
        print(f"- peer venv: {peer_versions(peer_py)}", flush=True)
    print(flush=True)

    table = Table(
        f"Throughput with {slots} slots, {n} trials",
        ["runner", "launcher", "makespan (s)", "trials/s", "vs barrier", "start-up (s)",
         "process wall (s)", "CPU (s)"],
    )
    sim_async = simulate_async(ds, slots)
    sim_barrier = simulate_barrier(ds, slots)
    table.add("simulated, async", "-", sim_async, n / sim_async, sim_barrier / sim_async, None,
              None, None)
    table.add("simulated, barrier", "-", sim_barrier, n / sim_barrier, 1.0, None, None, None)
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        work = Path(tmp)
        progress(f"hpo sweeper, submitit_local, {n} trials, {slots} slots")
        hpo = sweep(Path(sys.executable), "hpo", n, slots, ds, work)
        peer = None
        if peer_py is not None:
            progress(f"hydra-optuna-sweeper, submitit_local, {n} trials, {slots} slots")
            peer = sweep(peer_py, "peer", n, slots, ds, work)
    ratio = peer["makespan"] / hpo["makespan"] if peer is not None else None
    table.add("hpo sweeper, async", "submitit_local", hpo["makespan"], n / hpo["makespan"],
              ratio, hpo["startup"], hpo["wall"], hpo["cpu"])
    if peer is not None:
        table.add("hydra-optuna-sweeper, barrier", "submitit_local", peer["makespan"],
                  n / peer["makespan"], 1.0, peer["startup"], peer["wall"], peer["cpu"])
    table.notes += [
        "makespan: first job start to last job end (from the jobs' own stamps); vs barrier: "
        "throughput relative to the barrier row of the same kind (simulated / measured)",
        "submitit_local starts one Python process per trial: on a small machine their start-up "
        "(CPU-bound imports) adds to every trial and competes with the running ones",
        f"target: async >= {TARGET}x the barrier's trials/s",
    ]
    table.print()
    write_json(args.json, [table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
