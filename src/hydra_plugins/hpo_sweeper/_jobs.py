"""Running trials' jobs through the Hydra launcher of the sweep.

:func:`launcher_facts` reads what the plan needs to know of a launcher instance. A
:class:`JobRunner` starts the job(s) of trials in two steps: :meth:`JobRunner.submit` (in the
driver's main thread) returns one :class:`Handle` per trial, and the handle's ``wait`` (in a
slot thread) returns the trial's Hydra ``JobReturn``s.

- submitit launchers: ``submit`` calls sbatch (or starts the local process) at once, with the
  trial's resource settings, several trials in one job array when asked; the handle knows the
  job ids (:class:`hpo.attrs.LaunchedJobs`) before anything waits. :meth:`JobRunner.attach`
  makes a handle for jobs of an earlier driver.
- Hydra's basic launcher: nothing runs until ``wait``, which runs the job in this process
  through :class:`._inprocess.InProcessJobs` (the cached composition), one at a time because
  in-process jobs share cwd, logging and Hydra's singletons.
- Any other launcher: ``wait`` calls its ``launch``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from hpo.attrs import LaunchedJobs

from ._plan import LauncherFacts, ResourceClass, SweepPlan


def launcher_facts(launcher: Launcher, *, fast_inprocess: bool) -> LauncherFacts:
    """What a sweep needs to know of ``launcher`` (see :class:`._plan.LauncherFacts`)."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    executor = getattr(launcher, "_EXECUTOR", None)  # hydra-submitit-launcher: local | slurm
    submitit = executor in ("local", "slurm")
    in_process = isinstance(launcher, BasicLauncher)
    return LauncherFacts(
        name=type(launcher).__name__,
        in_process=in_process,
        fast=fast_inprocess and type(launcher) is BasicLauncher,
        remote=not in_process and executor != "local",
        executor=executor if submitit else None,
        params=dict(getattr(launcher, "params", {}) or {}) if submitit else None,
    )


@dataclass(frozen=True)
class TrialJobs:
    """What to run for one trial: its number, its job(s) (one per fold), its resources."""

    number: int
    jobs: list[list[str]]
    resources: ResourceClass | None = None


@dataclass
class Handle:
    """A trial's job(s) once started.

    Attributes:
        wait: Blocks until the jobs end; their returns (raises when a job was lost, failed
            outside the task, or could not be run).
        job: The submitted jobs (submitit launchers); None for in-process jobs.
        cancel: Stops the jobs (scancel; SIGINT to a local controller); None when they
            cannot be stopped from here (in-process).
    """

    wait: Callable[[], list[JobReturn]]
    job: LaunchedJobs | None = None
    cancel: Callable[[], None] | None = field(default=None, repr=False)


class JobRunner:
    """Starts the jobs of trials through ``launcher``; see the module docstring."""

    def __init__(self, launcher: Launcher, plan: SweepPlan) -> None:
        self.launcher = launcher
        self.plan = plan
        facts = plan.launcher
        self.kind = facts.executor
        self._lock = threading.Lock() if facts.in_process else None
        self._inprocess: Any = None
        if facts.fast:
            from ._inprocess import InProcessJobs

            self._inprocess = InProcessJobs(launcher)

    def submit(self, trials: Sequence[TrialJobs]) -> list[Handle]:
        """One handle per trial. On submitit launchers the jobs are submitted here: several
        trials of one resource class in one call (one job array) when ``hydra.sweeper.array``
        is on, else one call per trial. Raises what the submission raises (sbatch refused)."""
        if self.kind is None:
            return [Handle(wait=self._runner(t.jobs, t.number)) for t in trials]
        groups: list[list[TrialJobs]] = []
        if self.plan.array:
            by_class: dict[str | None, list[TrialJobs]] = {}
            for t in trials:
                by_class.setdefault(t.resources.name if t.resources else None, []).append(t)
            groups = list(by_class.values())
        else:
            groups = [[t] for t in trials]
        handles: dict[int, Handle] = {}
        for group in groups:
            for t, jobs in zip(group, self._submit(group), strict=True):
                handles[id(t)] = jobs
        return [handles[id(t)] for t in trials]

    def attach(self, rec: LaunchedJobs) -> Handle:
        """A handle for jobs an earlier driver submitted (running, or ended with a result)."""
        from . import _submitit

        jobs = _submitit.attach(rec)
        return Handle(wait=lambda: _submitit.wait(jobs), job=rec,
                      cancel=lambda: _submitit.cancel(jobs))

    def _submit(self, group: list[TrialJobs]) -> list[Handle]:
        from . import _submitit

        assert self.kind is not None
        params = self.plan.launcher_params(group[0].resources)
        submitted = _submitit.submit(self.launcher, self.kind, params,
                                     [(t.number, t.jobs) for t in group])
        return [
            Handle(wait=lambda jobs=jobs: _submitit.wait(jobs),  # type: ignore[misc]
                   job=_submitit.record(self.kind, params, jobs),
                   cancel=lambda jobs=jobs: _submitit.cancel(jobs))  # type: ignore[misc]
            for jobs in submitted
        ]

    def _runner(self, jobs: list[list[str]], number: int) -> Callable[[], list[JobReturn]]:
        return lambda: self.launch(jobs, number)

    def launch(self, jobs: list[list[str]], number: int) -> list[JobReturn]:
        """Run ``jobs`` (the trial's, or its K fold jobs) numbered from ``number``, blocking."""
        with self._lock if self._lock is not None else contextlib.nullcontext():
            if self._inprocess is not None:  # in-process: compose once per structure
                return self._inprocess.launch(jobs, number)
            # k-fold CV: the K fold jobs of a trial go in one call (a job array on SLURM)
            return list(self.launcher.launch(jobs, initial_job_idx=number))


class FunctionRunner:
    """A runner around a plain ``launch(jobs, number) -> [JobReturn]`` function (run in the
    slot thread), e.g. a test's stand-in for a launcher."""

    def __init__(self, launch: Callable[[list[list[str]], int], list[JobReturn]]) -> None:
        self.launch = launch

    def submit(self, trials: Sequence[TrialJobs]) -> list[Handle]:
        return [Handle(wait=lambda t=t: self.launch(t.jobs, t.number))  # type: ignore[misc]
                for t in trials]

    def attach(self, rec: LaunchedJobs) -> Handle:
        raise NotImplementedError("a function runner cannot re-attach to jobs")
