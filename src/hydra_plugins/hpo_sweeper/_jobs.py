"""Running a trial's jobs through the Hydra launcher of the sweep.

:func:`launcher_facts` reads what the plan needs to know of a launcher instance;
:class:`JobRunner` launches one trial's job(s) from a slot thread: through Hydra's launcher,
or, for Hydra's basic launcher, through :class:`._inprocess.InProcessJobs` (the cached
composition), one at a time because in-process jobs share cwd, logging and Hydra's singletons.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from ._plan import LauncherFacts


def launcher_facts(launcher: Launcher, *, fast_inprocess: bool) -> LauncherFacts:
    """What a sweep needs to know of ``launcher`` (see :class:`._plan.LauncherFacts`)."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    executor = getattr(launcher, "_EXECUTOR", None)  # hydra-submitit-launcher: local | slurm
    in_process = isinstance(launcher, BasicLauncher)
    slurm = dict(getattr(launcher, "params", {}) or {}) if executor == "slurm" else None
    return LauncherFacts(
        name=type(launcher).__name__,
        in_process=in_process,
        fast=fast_inprocess and type(launcher) is BasicLauncher,
        remote=not in_process and executor != "local",
        slurm_params=slurm,
    )


class JobRunner:
    """Launches the job(s) of one trial; safe to call from several slot threads."""

    def __init__(self, launcher: Launcher, facts: LauncherFacts) -> None:
        self.launcher = launcher
        self._lock = threading.Lock() if facts.in_process else None
        self._inprocess: Any = None
        if facts.fast:
            from ._inprocess import InProcessJobs

            self._inprocess = InProcessJobs(launcher)

    def launch(self, jobs: list[list[str]], number: int) -> list[JobReturn]:
        """Run ``jobs`` (the trial's, or its K fold jobs) numbered from ``number``."""
        with self._lock if self._lock is not None else contextlib.nullcontext():
            if self._inprocess is not None:  # in-process: compose once per structure
                return self._inprocess.launch(jobs, number)
            # k-fold CV: the K fold jobs of a trial go in one call (a job array on SLURM)
            return list(self.launcher.launch(jobs, initial_job_idx=number))
