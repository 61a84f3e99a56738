"""What a trial's job(s) returned, as the value the study is told. Pure: no storage here.

:func:`outcome` reads the Hydra ``JobReturn`` of each job of a trial (one, or one per fold)
and decides: COMPLETE with the objective values (the folds' mean under k-fold CV), PRUNED with
the pruner's message, or FAIL with one line saying why. :func:`failed_launch` tells a job that
failed outside the task (a FAIL) from a lost one (retried).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hpo.errors import first_line


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, from its jobs' returns.

    Attributes:
        state: COMPLETE, PRUNED or FAIL.
        values: One value per objective (COMPLETE only).
        error: Why it failed (FAIL), or the pruner's message (PRUNED).
        folds: k-fold CV: each fold's values (one number per fold for one objective).
        fold_std: k-fold CV: the folds' standard deviation (per objective when several).
        output_dir: The (first) job's output directory, when Hydra set it.
        fold_dirs: k-fold CV: each fold job's output directory, in fold order.
        job_id: The launcher's id of the (first) job.
    """

    state: TrialState
    values: tuple[float, ...] = ()
    error: str = ""
    folds: Any = None
    fold_std: Any = None
    output_dir: str | None = None
    job_id: str | None = None
    fold_dirs: tuple[str, ...] = ()


def outcome(rets: Sequence[JobReturn], n_objectives: int) -> Outcome:
    """The outcome of a trial whose jobs returned ``rets`` (one per fold under CV)."""
    first = rets[0]
    where: dict[str, Any] = {}
    if first.hydra_cfg is not None:
        hydra = first.hydra_cfg.hydra  # set by run_job: plain values, no interpolation
        out, job_id = hydra.runtime.get("output_dir"), hydra.job.get("id")
        where = {"output_dir": str(out) if out else None,
                 "job_id": str(job_id) if job_id is not None else None}
    per_fold: list[list[float]] = []
    for ret in rets:
        if ret.status != JobStatus.COMPLETED:
            exc = ret._return_value
            if isinstance(exc, optuna.TrialPruned):
                return Outcome(TrialState.PRUNED, error=str(exc)[:300], **where)
            why = error_line(exc) if isinstance(exc, BaseException) else str(exc)
            return Outcome(TrialState.FAIL, error=why, **where)
        values, error = objective_values(ret._return_value, n_objectives)
        if error is not None:
            return Outcome(TrialState.FAIL, error=error, **where)
        per_fold.append(values)
    if len(per_fold) == 1:
        return Outcome(TrialState.COMPLETE, values=tuple(per_fold[0]), **where)
    n = len(per_fold)
    means = [sum(v[i] for v in per_fold) / n for i in range(n_objectives)]
    stds = [math.sqrt(sum((v[i] - means[i]) ** 2 for v in per_fold) / max(n - 1, 1))
            for i in range(n_objectives)]
    single = n_objectives == 1
    dirs = tuple(str(r.hydra_cfg.hydra.runtime.get("output_dir") or "") if r.hydra_cfg
                 is not None else "" for r in rets)
    return Outcome(
        TrialState.COMPLETE, values=tuple(means),
        folds=[v[0] for v in per_fold] if single else per_fold,
        fold_std=stds[0] if single else stds, fold_dirs=dirs, **where,
    )


def failed_launch(exc: BaseException) -> Outcome | None:
    """A trial whose launch raised ``exc``: FAIL with one line when the job ran and failed
    outside the task, which a re-run would repeat: submitit's ``FailedJobError`` (the job's
    Python raised, e.g. its config did not compose) or a config error (OmegaConf, Hydra) of an
    in-process job. None: the job was lost (killed, never ran): it may be retried."""
    if type(exc).__name__ == "FailedJobError":
        return Outcome(TrialState.FAIL, error=error_line(exc))
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OmegaConfBaseException | HydraException):
            return Outcome(TrialState.FAIL, error=f"config error: {error_line(cur)}")
        cur = cur.__cause__ or cur.__context__
    return None


def objective_values(value: Any, n: int) -> tuple[list[float], str | None]:
    """The task's return value as ``n`` finite floats, or why it is not."""
    raw = list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value]
    if len(raw) != n:
        return [], f"the task returned {value!r}: expected {n} number(s), one per direction"
    out = []
    for v in raw:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return [], f"the task returned {v!r}, not a number"
        if not math.isfinite(f):
            return [], f"objective is {f} (not finite)"
        out.append(f)
    return out, None


def error_line(exc: BaseException, limit: int = 500) -> str:
    """One line for a trial's error: ``Type: first line``; a submitit job's own last line."""
    if type(exc).__name__ == "FailedJobError":  # submitit: the job's own error ends the trace
        # the trace sits between two dashed lines; its last unindented line is the error
        # (submitit's footer, "You can check full logs ... at paths:", comes after it)
        text = str(exc).strip()
        parts = re.split(r"^-{10,}$", text, flags=re.MULTILINE)
        trace = parts[1] if len(parts) >= 3 else text
        lines = [ln for ln in trace.splitlines() if ln.strip()]
        last = next((ln.strip() for ln in reversed(lines) if not ln.startswith(" ")), "")
        return f"job failed: {last}"[:limit]
    msg = first_line(exc, default="")
    return f"{type(exc).__name__}: {msg}".rstrip(": ")[:limit]
