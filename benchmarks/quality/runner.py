"""Run studies: one (problem, method, seed) per job, in parallel processes, kept on disk.

A run is ONE study of ``n_trials`` trials; the figures at smaller budgets are read from its
first trials (anytime regret), so budgets 10 / 25 / 50 cost one 50-trial study per seed. Each
finished run is written to ``<out>/runs/<problem>/<method>/seed<k>_n<n>.json``; a rerun reuses
those files (``fresh=True`` ignores them), so an interrupted benchmark resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hpo import attrs

RUNS = "runs"
# Study user attrs that LLMSampler keeps: LLM requests, tokens, cost.
LLM_TOTALS = {
    "calls": attrs.LLM_CALLS_TOTAL,
    "tokens_in": attrs.TOKENS_IN_TOTAL,
    "tokens_out": attrs.TOKENS_OUT_TOTAL,
    "cost_usd": attrs.COST_USD_TOTAL,
}


@dataclass(frozen=True)
class Job:
    """One study to run."""

    problem: str
    method: str
    seed: int
    n_trials: int

    def path(self, out: Path) -> Path:
        return out / RUNS / self.problem / self.method.replace("/", "__") / (
            f"seed{self.seed}_n{self.n_trials}.json")


@dataclass
class Run:
    """What one study did.

    Attributes:
        values: The objective of each trial in order (None for a failed trial).
        sources: ``hpo:source`` of each trial (``baseline``, ``llm``, ``clamped``,
            ``fallback:<reason>``, ...); ``sampler`` for classical methods, ``enqueued`` for
            a seed.
        llm: LLM requests, tokens and cost over the study (zeros for classical methods).
        wall_s: Wall time of the study.
        eval_s: Time spent in the problem's evaluation (the rest is the sampler's).
        extra: Method-specific figures (e.g. the adversary's behaviour counts).
        choices: ``hpo:source_choice`` of each trial (``{to, p_llm, draw, reason, why}``: how
            damage control shared it between the LLM and the classical sampler), None where
            the sampler recorded none (classical methods, runs of an older hpo).
    """

    job: dict[str, Any]
    values: list[float | None]
    sources: list[str]
    llm: dict[str, float]
    wall_s: float
    eval_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    choices: list[dict[str, Any] | None] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Run:
        return cls(**json.loads(path.read_text()))


class EvaluationFailed(Exception):
    """A trial the problem says failed (a diverged training in the table)."""


def _suggest(trial: Any, spec: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    d = spec.distribution
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(spec.name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(spec.name, d.low, d.high, log=d.log, step=d.step)
    assert isinstance(d, CategoricalDistribution)
    return trial.suggest_categorical(spec.name, d.choices)


_PROBLEMS: dict[str, Any] = {}


def _problem(name: str) -> Any:
    from quality.problems import PROBLEMS

    if name not in _PROBLEMS:
        _PROBLEMS[name] = PROBLEMS[name]()
    return _PROBLEMS[name]


def _init_worker() -> None:
    import warnings

    import optuna

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch  # GPSampler's

        torch.set_num_threads(1)
    except ImportError:
        pass
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("hpo").setLevel(logging.ERROR)


def _source(trial: Any) -> str:
    """Where a trial came from: ``hpo:source`` (with the fallback's reason), else the sampler."""
    source = trial.user_attrs.get(attrs.SOURCE)
    if source is None:
        return "enqueued" if "fixed_params" in trial.system_attrs else "sampler"
    reason = trial.user_attrs.get(attrs.FALLBACK_REASON)
    return f"{source}:{reason}" if reason else str(source)


def run_job(job: Job, out: Path) -> Run:
    """Run one study in this process and write its record."""
    import optuna

    from quality.methods import by_name

    problem = _problem(job.problem)
    method = by_name(job.method)
    setup = method.setup(problem, job.seed, job.n_trials)
    eval_s = 0.0

    def objective(trial: optuna.Trial) -> float:
        nonlocal eval_s
        params = {spec.name: _suggest(trial, spec) for spec in problem.space}
        t0 = time.perf_counter()
        ev = problem.evaluate(params)
        eval_s += time.perf_counter() - t0
        for step, value in ev.intermediate:
            if math.isfinite(value):
                trial.report(value, step)
        for key, value in ev.attrs.items():
            trial.set_user_attr(key, value)
        if ev.failed is not None:
            raise EvaluationFailed(ev.failed)
        return ev.value

    t0 = time.perf_counter()
    try:
        study = optuna.create_study(direction=problem.direction, sampler=setup.sampler)
        for params in setup.enqueue:
            study.enqueue_trial(params)
        study.optimize(objective, n_trials=job.n_trials, catch=(EvaluationFailed,))
        wall = time.perf_counter() - t0
        extra = setup.stats()
    finally:
        setup.close()
    trials = study.get_trials(deepcopy=False)
    if method.llm:
        from hpo.samplers import llm_share_summary

        extra["summary"] = llm_share_summary(study)
    sources = [_source(t) for t in trials]
    totals = study.user_attrs
    run = Run(
        job=asdict(job),
        values=[t.value if t.state == optuna.trial.TrialState.COMPLETE else None
                for t in trials],
        sources=sources,
        llm={k: float(totals.get(v, 0)) for k, v in LLM_TOTALS.items()},
        wall_s=wall,
        eval_s=eval_s,
        extra=extra,
        choices=[t.user_attrs.get(attrs.SOURCE_CHOICE) for t in trials],
    )
    path = job.path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(run)) + "\n")
    tmp.replace(path)
    return run


def run_all(
    jobs: Sequence[Job],
    out: Path,
    *,
    workers: int,
    fresh: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[dict[Job, Run], int]:
    """Every job's run, read from ``out`` when there, else run in ``workers`` processes; and
    how many were run now."""
    runs: dict[Job, Run] = {}
    todo: list[Job] = []
    for job in jobs:
        path = job.path(out)
        if path.exists() and not fresh:
            runs[job] = Run.load(path)
        else:
            todo.append(job)
    progress(f"{len(jobs)} runs: {len(runs)} already in {out / RUNS}, {len(todo)} to run "
             f"in {workers} process(es)")
    if not todo:
        return runs, 0
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(run_job, job, out): job for job in todo}
        for i, fut in enumerate(as_completed(futures), start=1):
            job = futures[fut]
            runs[job] = fut.result()
            if i % 10 == 0 or i == len(todo):
                elapsed = time.perf_counter() - t0
                progress(f"{i}/{len(todo)} runs done in {elapsed:.0f} s "
                         f"(last: {job.problem} {job.method} seed {job.seed})")
    return runs, len(todo)
