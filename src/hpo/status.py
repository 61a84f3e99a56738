"""``python -m hpo.status``: what a storage holds, and where each trial's SLURM job stands.

Usage::

    python -m hpo.status --storage sqlite:///outputs/hpo.db               # every study
    python -m hpo.status --storage sqlite:///outputs/hpo.db --study digits  # its trials
    python -m hpo.status --storage ... --study digits --leaderboard --top 5

Without ``--study`` it lists the studies (name, directions, trials per state, best value).
With ``--study`` it lists that study's trials: number, state, value(s), proposal source
(``hpo:source``), duration, job id and, for trials run on SLURM, the job's state from
``sacct`` (when ``sacct`` is on PATH); its header says where the study's driver stands
(running, pending, requeued, gone; host, since, log), for a driver submitted as a SLURM job
(``hydra.sweeper.detach``) from sacct. ``--leaderboard`` shows the best ``--top`` trials with
their params and the best trial per model choice. Everything is read from the storage; the
only write is ``hpo:slurm_state`` on trials still RUNNING (Optuna keeps finished trials
read-only), so that the dashboard shows it too. A storage that cannot be opened or a study that
is not there ends the command with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.attrs import (
    COST_USD_TOTAL,
    ERROR,
    JOB_ID,
    LLM_CALLS_TOTAL,
    PRUNED_AT_EPOCH,
    RESUMED_FROM_EPOCH,
    RETRIED,
    RETRY_OF,
    SLURM_JOB_ID,
    SLURM_STATE,
    SOURCE,
    TOKENS_IN_TOTAL,
    TOKENS_OUT_TOTAL,
    driver_alive,
    driver_job,
    driver_records,
    launch_job,
    launch_overrides,
)
from hpo.errors import ConfigError, HPOError
from hpo.storage import load_existing_study, open_existing

__all__ = [
    "DriverState",
    "SlurmJobState",
    "driver_state",
    "job_driver_state",
    "leaderboard_text",
    "main",
    "sacct_states",
    "studies_text",
    "trial_job_id",
    "trials_text",
]

log = logging.getLogger(__name__)

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
          TrialState.WAITING)
_SACCT_TIMEOUT_S = 20
_SACCT_CHUNK = 200
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
_JOB_IN_ERROR = re.compile(r"\b(?:SLURM job|Job) (\d+(?:_\d+)?)\b")


@dataclass(frozen=True, kw_only=True)
class SlurmJobState:
    """One line of ``sacct -X``: a job's state, run time and exit code."""

    job_id: str
    state: str
    elapsed: str
    exit_code: str


# ------------------------------------------------------------------------------ storage
def _open(url: str) -> optuna.storages.BaseStorage:
    return open_existing(url)


def _load(storage: optuna.storages.BaseStorage, url: str, name: str | None) -> optuna.Study:
    return load_existing_study(storage, url, name)


# ------------------------------------------------------------------------------ SLURM
def trial_job_id(t: FrozenTrial) -> str | None:
    """The SLURM job id of a trial: ``hpo:slurm_job_id`` (written by the job itself), the
    (first) SLURM job id ``hpo:launch`` recorded at submission, ``hpo:job_id`` (older
    versions), or the id named in ``hpo:error`` for a job that was lost. None when it ran
    elsewhere or is unknown."""
    value = t.user_attrs.get(SLURM_JOB_ID)
    if value is not None and _JOB_ID.match(str(value)):
        return str(value)
    job = launch_job(t.user_attrs)
    if job is not None:
        return job.ids[0] if job.executor == "slurm" else None
    value = t.user_attrs.get(JOB_ID)
    if value is not None and _JOB_ID.match(str(value)):
        return str(value)
    m = _JOB_IN_ERROR.search(str(t.user_attrs.get(ERROR, "")))
    return m.group(1) if m else None


@overload
def sacct_states(job_ids: Sequence[str]) -> dict[str, SlurmJobState]: ...
@overload
def sacct_states(job_ids: Sequence[str], *, strict: bool) -> dict[str, SlurmJobState] | None: ...


def sacct_states(job_ids: Sequence[str], *, strict: bool = False
                 ) -> dict[str, SlurmJobState] | None:
    """The sacct state of each job id (``JOBID`` or ``ARRAYID_TASKID``).

    Runs ``sacct -X -n -P -j IDS -o JobID,State,Elapsed,ExitCode``. A job sacct does not know
    is left out. When sacct is not installed or fails (accounting off, controller down), the
    states are unknown: an empty mapping (status then shows what the storage knows), or None
    with ``strict`` (the sweeper must not take "unknown" for "gone").
    """
    ids = sorted({j for j in job_ids if _JOB_ID.match(j)}, key=_job_sort_key)
    if not ids:
        return {}
    if shutil.which("sacct") is None:
        return None if strict else {}
    out: dict[str, SlurmJobState] = {}
    for start in range(0, len(ids), _SACCT_CHUNK):
        chunk = ids[start:start + _SACCT_CHUNK]
        lines = _sacct_lines(["-j", ",".join(chunk), "-o", "JobID,State,Elapsed,ExitCode"])
        if lines is None:
            return None if strict else out
        for parts in lines:
            if len(parts) < 4:
                continue
            job, state, elapsed, code = parts[:4]
            # a requeued job is listed once per run: the last line is the current one
            out[job] = SlurmJobState(job_id=job, state=state, elapsed=elapsed, exit_code=code)
    return out


def _sacct_lines(args: Sequence[str]) -> list[list[str]] | None:
    """The fields of each line of ``sacct -X -n -P ARGS``; None when sacct fails."""
    cmd = ["sacct", "-X", "-n", "-P", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_SACCT_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("sacct did not answer (%s): SLURM states are not shown", exc)
        return None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or [""])[0]
        log.warning("sacct failed (%s): SLURM states are not shown", first)
        return None
    return [line.strip().split("|") for line in done.stdout.splitlines() if line.strip()]


@dataclass(frozen=True, kw_only=True)
class DriverState:
    """Where the driver of a study stands.

    Attributes:
        state: ``running``, ``pending``, ``requeued``, ``gone``, ``ended <STATE>`` (a driver
            job that ended) or ``unknown``.
        job: The SLURM job that runs the driver (``hydra.sweeper.detach``), if any.
        host: Where it runs (ran).
        since: When it started (its current run), as text.
        requeued: How many times its SLURM job was requeued.
        log: The driver's log file, when known.
    """

    state: str
    job: str | None = None
    host: str | None = None
    since: str | None = None
    requeued: int = 0
    log: str | None = None

    def text(self) -> str:
        """One line: ``driver: SLURM job 7 running on node3 since ...; log ...``."""
        who = f"SLURM job {self.job}" if self.job else "process"
        parts = [f"driver: {who} {self.state}"]
        if self.host:
            parts.append(f"on {self.host}")
        if self.since:
            parts.append(f"since {self.since}")
        line = " ".join(parts)
        if self.requeued:
            line += f" (requeued {self.requeued}x)"
        return line + (f"; log {self.log}" if self.log else "")


def driver_state(study_attrs: dict[str, Any], *, use_sacct: bool = True) -> DriverState | None:
    """The state of the study's newest driver: its SLURM job (``hpo:driver_job``, asked with
    sacct) when it was submitted after the last driver registered, else that driver (alive or
    gone when it ran on this host). None when no driver ever ran the study."""
    records = driver_records(study_attrs)
    last = records[-1] if records else None
    job = driver_job(study_attrs)
    newest_job = job is not None and (
        last is None or last.get("slurm_job") == job["job_id"]
        or float(job.get("submitted") or 0) >= float(last.get("since") or 0))
    if job is not None and newest_job:
        lines = _sacct_lines(["-D", "-j", job["job_id"], "-o", "JobID,State,NodeList,Start"]
                             ) if use_sacct and shutil.which("sacct") else None
        return job_driver_state(job["job_id"], lines, log=job.get("log"))
    if last is None:
        return None
    host, _, rest = str(last["id"]).partition(":")
    alive = driver_alive(str(last["id"]))
    state = {True: "running", False: "gone", None: "unknown"}[alive]
    since = last.get("since")
    return DriverState(
        state=state, host=f"{host} (pid {rest.split(':')[0]})", job=last.get("slurm_job"),
        since=datetime.fromtimestamp(float(since)).isoformat(timespec="seconds")
        if since else None, log=last.get("log"))


def job_driver_state(job_id: str, lines: list[list[str]] | None, *,
                     log: str | None = None) -> DriverState:
    """A driver job's state from ``sacct -X -D -n -P -o JobID,State,NodeList,Start`` lines
    (one per run of the job; None: sacct could not be asked)."""
    if lines is None:
        return DriverState(state="unknown (sacct failed)", job=job_id, log=log)
    runs = [ln for ln in lines if len(ln) >= 4 and ln[0] == job_id]
    if not runs:
        return DriverState(state="gone (unknown to sacct)", job=job_id, log=log)
    requeued = sum(1 for r in runs[:-1] if r[1].startswith(("REQUEUED", "PREEMPTED")))
    _, state, node, start = runs[-1][:4]
    word = state.split(" ")[0]
    if word == "RUNNING":
        return DriverState(state="running", job=job_id, host=node, since=start,
                           requeued=requeued, log=log)
    if word in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "PREEMPTED"):
        what = "requeued, pending" if requeued or word != "PENDING" else "pending"
        return DriverState(state=what, job=job_id, requeued=requeued, log=log)
    return DriverState(state=f"ended {state}", job=job_id,
                       host=node if node not in ("", "None assigned") else None,
                       since=start if start not in ("", "Unknown") else None,
                       requeued=requeued, log=log)


def _job_sort_key(job: str) -> tuple[int, int]:
    head, _, tail = job.partition("_")
    return int(head), int(tail or -1)


def _store_slurm_states(study: optuna.Study, trials: Sequence[FrozenTrial],
                        states: dict[str, SlurmJobState]) -> None:
    """``hpo:slurm_state`` on RUNNING trials (finished trials are read-only in Optuna)."""
    storage = study._storage
    for t in trials:
        job = trial_job_id(t)
        if t.state != TrialState.RUNNING or job not in states:
            continue
        state = states[job].state
        if t.user_attrs.get(SLURM_STATE) == state:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, SLURM_STATE, state)
        except Exception as exc:  # it finished meanwhile, or the storage is read-only
            log.debug("cannot store %s on trial %d: %s", SLURM_STATE, t.number, exc)


# ------------------------------------------------------------------------------ text
def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _num(value)
    return " ".join(str(value).split())


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _duration(t: FrozenTrial, now: datetime) -> str | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or now
    seconds = max(0.0, (end - t.datetime_start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


def _directions(study: optuna.Study | optuna.study.StudySummary) -> list[str]:
    return [d.name.lower() for d in study.directions]


def _metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names
    if names and len(names) == len(study.directions):
        return list(names)
    return ["value"] if len(study.directions) == 1 else [
        f"value_{i}" for i in range(len(study.directions))
    ]


def _values(t: FrozenTrial) -> str | None:
    if t.values is None:
        return None
    return ", ".join(_num(v) for v in t.values)


def _counts(trials: Sequence[FrozenTrial]) -> dict[TrialState, int]:
    counts = dict.fromkeys(STATES, 0)
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _best(study: optuna.Study, trials: Sequence[FrozenTrial]) -> str | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not complete:
        return None
    if len(study.directions) > 1:
        return f"{len(_ranked(study, complete, pareto_only=True))} on the Pareto front"
    best = _ranked(study, complete)[0]
    return f"{_num(best.values[0])} (#{best.number})"


def _sign(direction: StudyDirection) -> float:
    return -1.0 if direction == StudyDirection.MAXIMIZE else 1.0


def _ranked(study: optuna.Study, complete: Sequence[FrozenTrial], *,
            pareto_only: bool = False) -> list[FrozenTrial]:
    """Complete trials best first; several objectives: the Pareto front first."""
    signs = [_sign(d) for d in study.directions]

    def key(t: FrozenTrial) -> list[float]:
        return [s * v for s, v in zip(signs, t.values, strict=True)]

    def dominated(t: FrozenTrial) -> bool:
        kt = key(t)
        return any(all(a <= b for a, b in zip(key(o), kt, strict=True)) and key(o) != kt
                   for o in complete if o is not t)

    front = {t.number for t in complete if len(signs) > 1 and not dominated(t)}
    if pareto_only:
        return [t for t in complete if t.number in front]
    return sorted(complete, key=lambda t: (len(signs) > 1 and t.number not in front,
                                           key(t)[0], t.number))


def studies_text(storage: optuna.storages.BaseStorage) -> str:
    """One row per study: name, directions, trials per state, best value."""
    rows = []
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = _counts(trials)
        rows.append([
            summary.study_name, ",".join(_directions(study)), len(trials),
            *(counts[s] for s in STATES), _best(study, trials),
        ])
    if not rows:
        return "the storage holds no study"
    headers = ["study", "direction", "trials", *(s.name.lower() for s in STATES), "best"]
    return _table(headers, rows)


def trials_text(study: optuna.Study, *, slurm: dict[str, SlurmJobState] | None = None,
                now: datetime | None = None, driver: DriverState | None = None) -> str:
    """The study's header (with its driver's state) and one row per trial (state, values,
    source, duration, jobs)."""
    trials = study.get_trials(deepcopy=False)
    now = now or datetime.now()
    slurm = slurm or {}
    counts = _counts(trials)
    shown_counts = ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n)
    lines = [
        f"study {study.study_name!r}: {' / '.join(_directions(study))} "
        f"{' / '.join(_metric_names(study))}; {len(trials)} trials"
        + (f" ({shown_counts})" if shown_counts else ""),
        f"best: {_best(study, trials) or '-'}",
    ]
    if driver is not None:
        lines.append(driver.text())
    totals = study.user_attrs
    if LLM_CALLS_TOTAL in totals:
        lines.append(
            f"LLM: {totals.get(LLM_CALLS_TOTAL, 0)} calls, "
            f"{totals.get(TOKENS_IN_TOTAL, 0)} tokens in, "
            f"{totals.get(TOKENS_OUT_TOTAL, 0)} out, "
            f"${float(totals.get(COST_USD_TOTAL, 0.0) or 0.0):.4f}"
        )
    if not trials:
        return "\n".join(lines)
    headers = ["#", "state", ", ".join(_metric_names(study)), "source", "duration", "job",
               "slurm", "note"]
    rows = []
    for t in trials:
        job = trial_job_id(t)
        sj = slurm.get(job) if job else None
        slurm_cell = (f"{sj.state} {sj.elapsed} exit {sj.exit_code}" if sj else
                      t.user_attrs.get(SLURM_STATE))
        rows.append([
            t.number, t.state.name, _values(t), t.user_attrs.get(SOURCE),
            _duration(t, now), job, slurm_cell, _note(t),
        ])
    lines += ["", _table(headers, rows)]
    return "\n".join(lines)


def _note(t: FrozenTrial) -> str | None:
    attrs = t.user_attrs
    parts = []
    if RETRY_OF in attrs:
        parts.append(f"retry of #{attrs[RETRY_OF]}")
    if attrs.get(RETRIED):
        parts.append("retried")
    if RESUMED_FROM_EPOCH in attrs:
        parts.append(f"resumed at epoch {attrs[RESUMED_FROM_EPOCH]}")
    if PRUNED_AT_EPOCH in attrs:
        parts.append(f"pruned at epoch {attrs[PRUNED_AT_EPOCH]}")
    if attrs.get(ERROR):
        parts.append(_short(str(attrs[ERROR]), 80))
    return "; ".join(parts) or None


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in params.items())


def _model_of(t: FrozenTrial) -> str | None:
    """The trial's ``model`` choice: a searched param, else its fixed ``model=`` override."""
    if "model" in t.params:
        return str(t.params["model"])
    for o in launch_overrides(t.user_attrs) or []:
        key, _, value = str(o).lstrip("+").partition("=")
        if key == "model":
            return value
    return None


def leaderboard_text(study: optuna.Study, *, top: int = 10) -> str:
    """The best ``top`` complete trials with their params, and the best trial per model."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values]
    names = ", ".join(_metric_names(study))
    if not complete:
        return f"leaderboard of {study.study_name!r}: no complete trial yet"
    ranked = _ranked(study, complete)
    multi = len(study.directions) > 1
    front = {t.number for t in _ranked(study, complete, pareto_only=True)}
    headers = ["rank", "#", names, *(["pareto"] if multi else []), "source", "params"]
    rows = [
        [i + 1, t.number, _values(t), *(["yes" if t.number in front else ""] if multi else []),
         t.user_attrs.get(SOURCE), _params_text(t.params)]
        for i, t in enumerate(ranked[:top])
    ]
    order = ("best first, Pareto front first" if multi else
             f"{_directions(study)[0]} {names}")
    lines = [f"leaderboard of {study.study_name!r} (top {min(top, len(ranked))} of "
             f"{len(ranked)} complete, {order}):", _table(headers, rows)]
    by_model: dict[str, FrozenTrial] = {}
    for t in ranked:  # best first: the first trial seen per model is its best
        model = _model_of(t)
        if model is not None and model not in by_model:
            by_model[model] = t
    lines.append("")
    if by_model:
        lines.append("best trial per model:")
        lines.append(_table(
            ["model", "#", names, "params"],
            [[m, t.number, _values(t), _params_text(t.params)] for m, t in by_model.items()],
        ))
    else:
        lines.append("best trial per model: the trials name no model (no `model` param)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hpo.status``; returns the exit status (0, or 2 on a bad storage/study)."""
    parser = argparse.ArgumentParser(
        prog="python -m hpo.status",
        description="List the studies of an Optuna storage, one study's trials with their "
                    "SLURM job states, or its leaderboard.",
    )
    parser.add_argument("--storage", required=True,
                        help="storage URL, e.g. sqlite:///outputs/hpo.db")
    parser.add_argument("--study", default=None,
                        help="a study: list its trials (default: list the studies)")
    parser.add_argument("--leaderboard", action="store_true",
                        help="show the best trials with their params and the best per model")
    parser.add_argument("--top", type=int, default=10,
                        help="trials in the leaderboard (default: 10)")
    parser.add_argument("--no-sacct", action="store_true",
                        help="do not ask sacct for the state of the trials' SLURM jobs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.top < 1:
            raise ConfigError(f"--top {args.top} is invalid: use an integer >= 1")
        storage = _open(args.storage)
        if args.study is None and not args.leaderboard:
            print(studies_text(storage))
            return 0
        study = _load(storage, args.storage, args.study)
        parts = []
        if args.study is not None:
            trials = study.get_trials(deepcopy=False)
            states = {} if args.no_sacct else sacct_states(
                [j for t in trials if (j := trial_job_id(t))]
            )
            if states:
                _store_slurm_states(study, trials, states)
            driver = driver_state(study.user_attrs, use_sacct=not args.no_sacct)
            parts.append(trials_text(study, slurm=states, driver=driver))
        if args.leaderboard:
            parts.append(leaderboard_text(study, top=args.top))
        print("\n\n".join(parts))
    except HPOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
