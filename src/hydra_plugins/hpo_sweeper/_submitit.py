"""Trials' jobs through submitit, as hydra-submitit-launcher runs them, in two steps.

hydra-submitit-launcher's ``launch`` builds an ``AutoExecutor`` from the launcher's ``params``,
submits the jobs with ``executor.map_array(launcher, ...)`` (the launcher instance is the
pickled callable: its ``__call__`` runs the Hydra job, its ``checkpoint`` requeues it) and
blocks until every result is back. The sweeper needs what happens in between: the job ids as
soon as sbatch returns (recorded on the trial, so that a restarted driver can re-attach), the
launcher's params per trial (``hydra.sweeper.resources``), several trials in one job array, and
jobs it did not submit itself (re-attached). So :func:`submit` builds the executor the same way
from the same params (plus the trial's resources), and submits the same callable with the same
arguments; :class:`Jobs` waits for, cancels and looks up jobs. The job side does not change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from hpo.attrs import LaunchedJobs

from ._recovery import JobFacts

log = logging.getLogger(__name__)

# the launcher params hydra-submitit-launcher passes to AutoExecutor's constructor, not to
# update_parameters (its ``launch``: ``init_keys``)
_INIT_KEYS = {"submitit_folder", "max_num_timeout"}
_POLL_S = 1.0


def executor_for(kind: str, params: Mapping[str, Any]) -> Any:
    """A submitit ``AutoExecutor`` for ``params``, built as hydra-submitit-launcher builds it.

    Args:
        kind: ``"slurm"`` or ``"local"`` (the launcher's ``_EXECUTOR``).
        params: The launcher's parameters (``hydra.launcher`` resolved; with the trial's
            resource settings merged in).
    """
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=kind, **init)
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{
        key if key in generic else f"{kind}_{key}": value
        for key, value in params.items() if key not in _INIT_KEYS
    })
    return executor


def submit(
    launcher: Launcher, kind: str, params: Mapping[str, Any],
    trials: Sequence[tuple[int, list[list[str]]]],
) -> list[list[Any]]:
    """Submit the jobs of ``trials`` (``(number, jobs)`` each) in one call; return each
    trial's submitit jobs. Several jobs go out as one job array on SLURM (submitit's
    ``map_array``), one job as a plain job. Raises what submitit raises when sbatch fails."""
    config: Any = getattr(launcher, "config", None)
    if config is not None:  # as the launcher's launch: the sweep dir exists before any job
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    args: list[tuple[Any, ...]] = []
    for number, jobs in trials:
        for i, overrides in enumerate(jobs):
            idx = number + i
            # the same arguments as hydra-submitit-launcher's launch gives its __call__
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                         Singleton.get_state()))
    submitted = executor_for(kind, params).map_array(launcher, *zip(*args, strict=True))
    out, at = [], 0
    for _, jobs in trials:
        out.append(list(submitted[at:at + len(jobs)]))
        at += len(jobs)
    return out


def record(kind: str, params: Mapping[str, Any], jobs: Sequence[Any]) -> LaunchedJobs:
    """What a trial stores of its submitted ``jobs`` (see :class:`hpo.attrs.LaunchedJobs`)."""
    folder = Path(str(params["submitit_folder"])).expanduser().absolute()
    return LaunchedJobs(executor=kind, folder=str(folder),
                        ids=tuple(str(j.job_id) for j in jobs),
                        tasks=jobs[0].num_tasks if jobs else 1)


# ------------------------------------------------------------------------------ jobs
def attach(rec: LaunchedJobs) -> list[Any]:
    """submitit's job objects for jobs this process did not submit."""
    tasks = list(range(rec.tasks))
    if rec.executor == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return [SlurmJob(folder=rec.folder, job_id=i, tasks=tasks) for i in rec.ids]
    from submitit.local.local import LocalJob

    return [LocalJob(folder=rec.folder, job_id=i, tasks=tasks) for i in rec.ids]


def wait(jobs: Sequence[Any]) -> list[JobReturn]:
    """The Hydra job returns of ``jobs``, as hydra-submitit-launcher collects them: task 0's
    result of each job. Blocks; raises what submitit raises for a job that failed (the job's
    Python raised: ``FailedJobError``) or left no result (``UncompletedJobError``)."""
    for job in jobs:
        if _orphan_local(job):
            # a local job of an earlier driver: submitit has no process handle to poll
            while _local_alive(str(job.job_id)):
                time.sleep(_POLL_S)
    return [job.results()[0] for job in jobs]


def cancel(jobs: Sequence[Any]) -> None:
    """Cancel ``jobs``: scancel on SLURM; a local job's tasks get SIGINT (see
    :func:`_stop_local`). Never raises."""
    for job in jobs:
        with contextlib.suppress(Exception):
            if type(job).__name__ == "LocalJob":
                _stop_local(int(job.job_id))
            else:
                job.cancel(check=False)


def _stop_local(pid: int) -> None:
    """Stop the local job whose controller is ``pid``.

    submitit's own ``cancel`` sends SIGINT to the controller, which then prints a
    KeyboardInterrupt traceback on the driver's terminal (it inherits the driver's stderr). So
    the tasks get SIGINT instead (their output goes to the job's log): the controller sees them
    end and exits quietly. A controller with no task yet is killed (it has nothing to stop).
    """
    if not _local_alive(str(pid)):
        return
    tasks = _children(pid)
    for task in tasks:
        with contextlib.suppress(OSError):
            os.kill(task, signal.SIGINT)
    if not tasks:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def facts(recs: Sequence[LaunchedJobs]) -> list[JobFacts]:
    """The :class:`JobFacts` of each record, with one sacct call for all SLURM jobs."""
    from submitit.core.utils import JobPaths

    slurm = sorted({i for r in recs if r.executor == "slurm" for i in r.ids})
    states = _sacct(slurm) if slurm else {}
    out = []
    for rec in recs:
        results = all(JobPaths(rec.folder, i, 0).result_pickle.exists() for i in rec.ids)
        if rec.executor == "slurm":
            out.append(JobFacts(results, tuple((states or {}).get(i, "") for i in rec.ids),
                                known=states is not None))
        else:
            out.append(JobFacts(results, tuple("RUNNING" if _local_alive(i) else ""
                                               for i in rec.ids)))
    return out


def _sacct(ids: Sequence[str]) -> dict[str, str] | None:
    from hpo.status import sacct_states

    states = sacct_states(ids, strict=True)
    return None if states is None else {j: s.state for j, s in states.items()}


def _orphan_local(job: Any) -> bool:
    return type(job).__name__ == "LocalJob" and getattr(job, "_process", None) is None


def _local_alive(pid: str) -> bool:
    """Whether ``pid`` is a live submitit job controller (a zombie or another program that
    reused the pid is not)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z" and "submitit.local._local" in " ".join(argv)
