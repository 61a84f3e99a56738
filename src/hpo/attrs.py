"""The storage schema of hpo: every attribute key it writes on Optuna trials and studies.

Optuna storage is the single source of truth of a study (see docs/architecture.md); these keys
are its schema beyond Optuna's own columns. Every module that reads or writes one imports the
constant from here. Each key is registered with where it lives (trial or study user attrs), who
writes it and what its value means; ``python -m hpo.attrs`` prints that table, which
docs/architecture.md carries (a test keeps the two equal).

Composite values have readers here too (:func:`launch_driver`, :func:`launch_overrides`,
:func:`launch_job`, :func:`driver_records`, :func:`driver_job`, :func:`trial_output_dir`), so
a reader never depends on how a writer packed them, and studies written by older versions
(``hpo:driver``, ``hpo:overrides`` and ``hpo:output_dir`` on every trial) read the same. The
driver id's writer and liveness check (:func:`driver_id`, :func:`driver_alive`) live here too:
the sweeper and ``hpo.status`` both read it.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One attribute key of the schema."""

    name: str
    scope: str  # "trial" or "study" (user attrs)
    writer: str  # who writes it
    meaning: str  # the value and when it is there


KEYS: list[Key] = []


def _key(name: str, scope: str, writer: str, meaning: str) -> str:
    KEYS.append(Key(name, scope, writer, meaning))
    return name


# ------------------------------------------------------------------ trial: the sweeper (driver)
LAUNCH = _key(
    "hpo:launch", "trial", "sweeper",
    '`{"driver": "host:pid:start", "overrides": [...]}`, written once when the trial\'s job is '
    "launched: the driver that owns it and the Hydra overrides of its job; on submitit "
    'launchers written once the job is submitted, with `"job": {"executor": "slurm"|"local", '
    '"folder": ".../%j", "ids": [...]}` (SLURM job ids, `ARRAYID_TASKID` for array tasks, or '
    "local process ids) and the `\"resources\"` class when one applies; a driver that "
    "re-attaches to the job rewrites it with its own id (read it with `hpo.attrs.launch_job`)")
HEARTBEAT = _key(
    "hpo:heartbeat", "trial", "sweeper",
    "unix time of the driver's last heartbeat for the running trial (every "
    "`heartbeat_interval_s`); a stale one marks an orphan")
ERROR = _key(
    "hpo:error", "trial", "sweeper",
    "why the trial failed, one line (the task's exception, a lost job, an orphan)")
PRUNED = _key("hpo:pruned", "trial", "sweeper", "the pruner's message of a pruned trial")
RETRIED = _key(
    "hpo:retried", "trial", "sweeper",
    "true on a failed trial that was re-run as another trial: it does not count in the budget")
RETRY_OF = _key("hpo:retry_of", "trial", "sweeper",
                "number of the failed trial this one re-runs (same params)")
RETRY_COUNT = _key("hpo:retry_count", "trial", "sweeper",
                   "how many times these params have been retried so far")
OUTPUT_DIR = _key(
    "hpo:output_dir", "trial", "sweeper",
    "the job's output directory; written only when it cannot be derived from the `output_dir` "
    "pattern of its driver's record (`hpo:drivers:<id>`; read it with "
    "`hpo.attrs.trial_output_dir`)")
FOLDS = _key("folds", "trial", "sweeper",
             "k-fold CV: the objective of each fold (a list per objective when several)")
FOLD_STD = _key("fold_std", "trial", "sweeper",
                "k-fold CV: the standard deviation of the folds' objective")
# written on every trial by earlier versions of hpo; read, never written
DRIVER = _key("hpo:driver", "trial", "sweeper (old)", "replaced by `hpo:launch`; still read")
OVERRIDES = _key("hpo:overrides", "trial", "sweeper (old)",
                 "replaced by `hpo:launch`; still read")
JOB_ID = _key(
    "hpo:job_id", "trial", "sweeper (old)",
    "the launcher's job id when the job returned; replaced by the job ids in `hpo:launch`, "
    "written at submission; still read")

# ------------------------------------------------------------------ trial: the sampler
SOURCE = _key(
    "hpo:source", "trial", "sampler",
    "where the params came from: baseline, llm, repaired, clamped, leader (hybrid mode's "
    "classical optimizer) or fallback")
SOURCE_CHOICE = _key(
    "hpo:source_choice", "trial", "sampler",
    "how the trial's source was chosen: `{to, p_llm, draw, reason, why}` (the LLM's share then)")
CANDIDATE = _key("hpo:candidate", "trial", "sampler",
                 "hybrid mode with agent.rank_candidates: the leader's draw the LLM picked")
FALLBACK_REASON = _key("hpo:fallback_reason", "trial", "sampler",
                       "why the whole trial came from the fallback sampler")
RATIONALE = _key("hpo:rationale", "trial", "sampler", "the LLM's reason for the proposal")
PARAM_SOURCES = _key("hpo:param_sources", "trial", "sampler",
                     "`{param: source}` when the params' sources differ")
TOKENS_IN = _key("hpo:tokens_in", "trial", "sampler",
                 "LLM input tokens of the call that proposed the trial's batch (first trial)")
TOKENS_OUT = _key("hpo:tokens_out", "trial", "sampler", "LLM output tokens, as `hpo:tokens_in`")
COST_USD = _key("hpo:cost_usd", "trial", "sampler", "LLM cost in USD, as `hpo:tokens_in`")
LATENCY_S = _key("hpo:latency_s", "trial", "sampler", "wall time of the LLM call, seconds")
LLM_CALL = _key("hpo:llm_call", "trial", "sampler",
                "number of the LLM call that proposed the trial (as in the dump files)")
BATCH = _key("hpo:batch", "trial", "sampler", 'position in the call\'s batch, `"i/n"`')
STEP = _key("hpo:step", "trial", "sampler", "the chain step that produced the proposal")
DROPPED_PARAMS = _key("hpo:dropped_params", "trial", "sampler",
                      "proposed values the checker rejected")
DROPPED_PROPOSALS = _key("hpo:dropped_proposals", "trial", "sampler",
                         "proposals of the call the checker dropped whole")

# ------------------------------------------------------------------ trial: the job
HOST = _key("hpo:host", "trial", "job (OptunaReporter)", "host name the job runs on")
SLURM_JOB_ID = _key("hpo:slurm_job_id", "trial", "job (OptunaReporter)",
                    "SLURM job id (`ARRAYID_TASKID` for array tasks)")
SLURM_RESTARTS = _key("hpo:slurm_restarts", "trial", "job (OptunaReporter)",
                      "SLURM restart count once the job was requeued")
CURVES = _key("curves", "trial", "job (OptunaReporter, command task)",
              '`{"epoch": [...], "val/loss": [...], ...}`: the learning curves so far')
PER_CLASS = _key("per_class", "trial", "job (OptunaReporter); sweeper under cv.folds",
                 "per-class scores (under cv.folds: the mean over folds, with `std`)")
PER_CLASS_STD = _key("per_class_std", "trial", "sweeper under cv.folds",
                     "the sample standard deviation across folds of each per-class score "
                     "(`{metric: {class: std}}`; null with one fold's value)")
CURVES_FOLD = _key("curves_fold_<i>", "trial", "job (OptunaReporter, command task)",
                   "under cv.folds: fold i's learning curves")
PER_CLASS_FOLD = _key("per_class_fold_<i>", "trial", "job (OptunaReporter, command task)",
                      "under cv.folds: fold i's per-class scores")
PRUNED_AT_EPOCH = _key("pruned_at_epoch", "trial", "job (OptunaReporter)",
                       "epoch at which the pruner stopped the trial")
OOM_BATCH_SIZES = _key("hpo:oom_batch_sizes", "trial", "job (hpo.train)",
                       "batch sizes tried after out-of-memory errors")
BATCH_SIZE_USED = _key("hpo:batch_size_used", "trial", "job (hpo.train)",
                       "the batch size that fitted after out-of-memory errors")
RESUMED_FROM_EPOCH = _key("hpo:resumed_from_epoch", "trial", "job (hpo.train)",
                          "epoch of the checkpoint a requeued job resumed from")

# ------------------------------------------------------------------ trial: status
SLURM_STATE = _key("hpo:slurm_state", "trial", "hpo.status",
                   "last sacct state seen for the trial's job")

# ------------------------------------------------------------------ study
DRIVERS = _key(
    "hpo:drivers", "study", "sweeper (earlier versions)",
    "the list of drivers that ran the study, written by earlier versions (a read-modify-write "
    "that lost the records of drivers starting together); still read, merged with "
    "`hpo:drivers:<id>`; entries as there (oldest: plain id strings)")
DRIVER_PREFIX = "hpo:drivers:"
DRIVER_RECORD = _key(
    DRIVER_PREFIX + "<id>", "study", "sweeper",
    'one driver that ran the study, under its own key (`<id>` is `host:pid:start`), written '
    'once when it starts: `{"id": "host:pid:start", "output_dir": ".../trial_{number}", '
    '"since": unix time}`, the pattern null when not derivable; a driver running as a SLURM '
    'job adds `"slurm_job"` (its job id) and `"log"`. Read them with '
    "`hpo.attrs.driver_records` (oldest first, the last 50)")
DRIVER_JOB = _key(
    "hpo:driver_job", "study", "sweeper (detach)",
    '`{"job_id": "123", "log": "/abs/driver-123.log", "script": "/abs/driver.sbatch", '
    '"submitted": unix time}`: the SLURM job that runs the driver (`hydra.sweeper.detach`)')
APP = _key(
    "hpo:app", "study", "sweeper (hpo.best.write_results)",
    '`{"argv": [...], "config_name": ..., "config_dir": ..., "groups": [...]}`: how the '
    "sweep's app is started (program and config flags, no overrides) and its config groups; "
    "`python -m hpo.best` builds rerun commands and exported configs from it")
SEARCH_SPACE = _key("hpo:search_space", "study", "sweeper",
                    "`{param: distribution class}` of the first run")
STOP = _key("hpo:stop", "study", "sampler", "the planner's reason to stop the study")
LEADER = _key("hpo:leader", "study", "sampler", "hybrid mode: the classical optimizer leading")
TOKENS_IN_TOTAL = _key("hpo:tokens_in_total", "study", "sampler", "LLM input tokens, total")
TOKENS_OUT_TOTAL = _key("hpo:tokens_out_total", "study", "sampler", "LLM output tokens, total")
COST_USD_TOTAL = _key("hpo:cost_usd_total", "study", "sampler", "LLM cost in USD, total")
LLM_CALLS_TOTAL = _key("hpo:llm_calls_total", "study", "sampler", "LLM requests, total")
FALLBACK_TOTAL = _key("hpo:fallback_total", "study", "sampler",
                      "trials that came whole from the fallback sampler")


# ------------------------------------------------------------------ readers of composite values
@dataclass(frozen=True)
class LaunchedJobs:
    """The submitit job(s) of a trial, as :data:`LAUNCH` records them at submission.

    Attributes:
        executor: ``"slurm"`` or ``"local"`` (submitit's executor).
        folder: submitit's folder, with its ``%j`` (``%A``, ``%a``) left in.
        ids: One id per job (k-fold CV: one per fold): SLURM job ids (``ARRAYID_TASKID`` for
            array tasks) or, for ``"local"``, the process ids of submitit's job controllers.
        tasks: Tasks per job (``tasks_per_node * nodes``).
    """

    executor: str
    folder: str
    ids: tuple[str, ...]
    tasks: int = 1

    def value(self) -> dict[str, Any]:
        """The record as stored (``tasks`` only when not 1)."""
        out: dict[str, Any] = {"executor": self.executor, "folder": self.folder,
                               "ids": list(self.ids)}
        if self.tasks != 1:
            out["tasks"] = self.tasks
        return out


def launch_record(
    driver: str, overrides: list[str], *, job: LaunchedJobs | None = None,
    resources: str | None = None,
) -> dict[str, Any]:
    """The value of :data:`LAUNCH` for a trial launched by ``driver`` with ``overrides``; on
    submitit launchers with its submitted ``job`` and the ``resources`` class it got."""
    out: dict[str, Any] = {"driver": driver, "overrides": list(overrides)}
    if job is not None:
        out["job"] = job.value()
    if resources is not None:
        out["resources"] = resources
    return out


def launch_job(attrs: Mapping[str, Any]) -> LaunchedJobs | None:
    """The submitit job(s) the trial with user attrs ``attrs`` was submitted as; None when it
    ran in-process, was never submitted, or was launched by an older version."""
    rec = attrs.get(LAUNCH)
    job = rec.get("job") if isinstance(rec, Mapping) else None
    if not isinstance(job, Mapping):
        return None
    ids, folder, executor = job.get("ids"), job.get("folder"), job.get("executor")
    if not (isinstance(ids, list) and ids and isinstance(folder, str)
            and executor in ("slurm", "local")):
        return None
    tasks = job.get("tasks", 1)
    return LaunchedJobs(executor=str(executor), folder=folder, ids=tuple(str(i) for i in ids),
                        tasks=tasks if isinstance(tasks, int) and tasks > 0 else 1)


def relaunched(attrs: Mapping[str, Any], driver: str) -> dict[str, Any] | None:
    """:data:`LAUNCH` of a trial re-attached by ``driver``: the same record, its driver now
    ``driver``; None when the trial has no record."""
    rec = attrs.get(LAUNCH)
    return {**rec, "driver": driver} if isinstance(rec, Mapping) else None


def launch_driver(attrs: Mapping[str, Any]) -> str | None:
    """The driver id (``host:pid:start``) that launched the trial with user attrs ``attrs``."""
    rec = attrs.get(LAUNCH)
    value = rec.get("driver") if isinstance(rec, Mapping) else attrs.get(DRIVER)
    return value if isinstance(value, str) else None


def launch_overrides(attrs: Mapping[str, Any]) -> list[str] | None:
    """The Hydra overrides of the trial's job; None before it was launched."""
    rec = attrs.get(LAUNCH)
    value = rec.get("overrides") if isinstance(rec, Mapping) else attrs.get(OVERRIDES)
    return [str(o) for o in value] if isinstance(value, list) else None


def driver_record(
    driver: str, output_dir: str | None, *, since: float | None = None,
    slurm_job: str | None = None, log: str | None = None,
) -> dict[str, Any]:
    """An entry of :data:`DRIVERS`: the driver id, its output-dir pattern (``{number}``), when
    it started; for a driver that runs as a SLURM job, that job's id and the driver's log."""
    out: dict[str, Any] = {"id": driver, "output_dir": output_dir}
    if since is not None:
        out["since"] = since
    if slurm_job is not None:
        out["slurm_job"] = slurm_job
    if log is not None:
        out["log"] = log
    return out


def driver_job(study_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """:data:`DRIVER_JOB` (``job_id``, ``log``, ``script``, ``submitted``) or None."""
    rec = study_attrs.get(DRIVER_JOB)
    if isinstance(rec, Mapping) and isinstance(rec.get("job_id"), str):
        return dict(rec)
    return None


def driver_key(driver: str) -> str:
    """The study user attr that holds one driver's record (:data:`DRIVER_RECORD`)."""
    return DRIVER_PREFIX + driver


def _since(record: Mapping[str, Any]) -> float:
    since = record.get("since")
    return float(since) if isinstance(since, int | float) else 0.0


def driver_records(study_attrs: Mapping[str, Any], *, keep: int = 50) -> list[dict[str, Any]]:
    """The drivers of a study, oldest first (the last ``keep``), each a dict with ``id`` (and
    ``output_dir``): the list of :data:`DRIVERS` that older versions wrote (plain id strings
    come back as ``{"id": ...}``), then the :data:`DRIVER_RECORD` records by start time."""
    out: list[dict[str, Any]] = []
    for d in study_attrs.get(DRIVERS) or []:
        if isinstance(d, str):
            out.append({"id": d, "output_dir": None})
        elif isinstance(d, Mapping) and isinstance(d.get("id"), str):
            out.append(dict(d))
    seen = {d["id"] for d in out}
    own = [dict(v) for k, v in study_attrs.items()
           if k.startswith(DRIVER_PREFIX) and isinstance(v, Mapping)
           and isinstance(v.get("id"), str) and v["id"] not in seen]
    own.sort(key=_since)
    return [*out, *own][-keep:]


def trial_output_dir(
    number: int, attrs: Mapping[str, Any], study_attrs: Mapping[str, Any]
) -> str | None:
    """The output directory of trial ``number`` (user attrs ``attrs``) of a study (its user
    attrs ``study_attrs``): stored, or derived from its driver's pattern; None if unknown."""
    stored = attrs.get(OUTPUT_DIR)
    if isinstance(stored, str):
        return stored
    driver = launch_driver(attrs)
    if driver is None:
        return None
    rec = study_attrs.get(driver_key(driver))  # its own record; older versions: the list
    if not isinstance(rec, Mapping):
        rec = next((d for d in reversed(driver_records(study_attrs)) if d["id"] == driver), {})
    pattern = rec.get("output_dir")
    return pattern.replace("{number}", str(number)) if isinstance(pattern, str) else None


# ------------------------------------------------------------------ the driver id
def driver_id() -> str:
    """This process as a driver, as :data:`LAUNCH` and :data:`DRIVERS` name it:
    ``host:pid:start`` (the process start time tells a live pid from a reused one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid())}"


def _proc_start(pid: int) -> str:
    # the process start time (clock ticks since boot)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return "?"


def driver_alive(driver: str) -> bool | None:
    """True/False for a driver id of this host; None when it runs elsewhere (unknown)."""
    try:
        host, pid, start = driver.rsplit(":", 2)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        return _proc_start(int(pid)) == start
    except ValueError:
        return None


# ------------------------------------------------------------------ the table of the docs
def schema_table() -> str:
    """The schema as a Markdown table (docs/architecture.md carries it)."""
    rows = ["| key | where | written by | value |", "|---|---|---|---|"]
    rows += [f"| `{k.name}` | {k.scope} | {k.writer} | {k.meaning} |" for k in KEYS]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(schema_table() + "\n")
