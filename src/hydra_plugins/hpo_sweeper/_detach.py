"""The driver as a small SLURM job: ``hydra.sweeper.detach=true``.

Instead of running the sweep, the command submits itself with sbatch (``--requeue``): the same
command line with ``hydra.sweeper.detach=false`` and ``hydra.sweep.dir`` fixed to this run's,
in the same working directory and environment. That job is the driver. It survives the login
session; when SLURM preempts it (SIGTERM) or it nears its time limit (USR1, which it turns into
``scontrol requeue`` of its own job), it stops with its trials' jobs left running, and its
next run re-attaches to them. The study records the job (``hpo:driver_job``), so that
``python -m hpo.status`` shows where the driver stands and where its log is.

The driver job's script takes its own job id and log into ``HPO_DRIVER_SLURM_JOB`` and
``HPO_DRIVER_LOG`` and then unsets SLURM's variables: the trial jobs it submits get their own,
not the driver's (``SLURM_CPUS_PER_TASK``, ``SLURM_RESTART_COUNT``, ...).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpo import attrs
from hpo.errors import ConfigError
from hpo.storage import redact_url

from ._plan import SweepPlan

log = logging.getLogger(__name__)

ENV_DRIVER_JOB = "HPO_DRIVER_SLURM_JOB"
ENV_DRIVER_LOG = "HPO_DRIVER_LOG"
# sbatch options of the driver job unless hydra.sweeper.driver_sbatch sets them
DEFAULT_SBATCH = {"ntasks": "1", "cpus-per-task": "1", "mem": "2G"}
# USR1 this many seconds before the driver job's time limit: it requeues itself
SIGNAL_BEFORE_END_S = 120
_TIMEOUT_S = 60


def driver_command(argv: Sequence[str], module: str | None, sweep_dir: str) -> list[str]:
    """The driver job's command: this process's command line (``python -m module`` or
    ``python script``) with ``hydra.sweeper.detach=false`` and the absolute sweep dir.

    Raises:
        ConfigError: An argument carries a password (it would be written to the script).
    """
    args = [a for a in argv[1:] if _key(a) not in ("hydra.sweeper.detach", "hydra.sweep.dir")]
    for a in args:
        if redact_url(a) != a:
            raise ConfigError(
                f"hydra.sweeper.detach=true writes the command line into an sbatch script, and "
                f"{redact_url(a)!r} carries a password: keep it in PGPASSWORD or ~/.pgpass, or "
                "pass the URL as ${oc.env:HPO_STORAGE_URL}"
            )
    head = [sys.executable, "-m", module] if module else [sys.executable,
                                                          os.path.abspath(argv[0])]
    return [*head, *args, "hydra.sweeper.detach=false",
            f"hydra.sweep.dir={os.path.abspath(sweep_dir)}"]


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg else ""


def driver_script(command: Sequence[str], *, name: str, log_dir: str, cwd: str,
                  sbatch: Mapping[str, str]) -> str:
    """The driver job's sbatch script (see the module docstring)."""
    options = {
        "job-name": name,
        "requeue": None,
        "open-mode": "append",  # one log across the job's runs
        "output": f"{log_dir}/driver-%j.log",
        "chdir": cwd,
        "signal": f"B:USR1@{SIGNAL_BEFORE_END_S}",
        **DEFAULT_SBATCH,
        **{k.lstrip("-"): v for k, v in sbatch.items()},
    }
    lines = ["#!/bin/bash", "# written by hpo (hydra.sweeper.detach=true): the sweep's driver"]
    lines += [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={v}" for k, v in options.items()]
    lines += [
        "",
        f'export {ENV_DRIVER_JOB}="$SLURM_JOB_ID"',
        f'export {ENV_DRIVER_LOG}={shlex.quote(log_dir)}/driver-"$SLURM_JOB_ID".log',
        'echo "[hpo driver] SLURM job $SLURM_JOB_ID on $(hostname), run '
        '$((${SLURM_RESTART_COUNT:-0} + 1)), $(date --iso-8601=seconds)"',
        "# the trial jobs this driver submits get SLURM variables of their own, not these",
        'for v in $(compgen -e); do case "$v" in SLURM_CONF) ;; SLURM_*|SBATCH_*|SRUN_*) '
        'unset "$v" ;; esac; done',
        f"exec {shlex.join(command)}",
        "",
    ]
    return "\n".join(lines)


def submit_driver(plan: SweepPlan) -> list[list[str]]:
    """Submit the driver job, record it on the study, print its id, log and how to watch it.

    Returns:
        No trial's overrides (nothing ran here): an empty list.
    """
    from ._study import build_fallback, build_pruner, open_study

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    command = driver_command(sys.argv, spec.name if spec is not None else None, plan.sweep_dir)
    sweep_dir = Path(plan.sweep_dir).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    script = sweep_dir / "driver.sbatch"
    script.write_text(driver_script(
        command, name=f"hpo-driver-{plan.study_name}", log_dir=str(sweep_dir),
        cwd=os.getcwd(), sbatch=plan.driver_sbatch))
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                              text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(
            f"hydra.sweeper.detach=true could not run sbatch ({exc}): run it on a login node "
            "of the cluster"
        ) from exc
    if done.returncode != 0:
        first = next((ln for ln in done.stderr.splitlines() if ln.strip()), "no message")
        raise ConfigError(
            f"SLURM refused the driver job ({first.strip()}): fix hydra.sweeper.driver_sbatch "
            f"(script: {script})"
        )
    job_id = done.stdout.strip().split(";")[0]
    log_path = sweep_dir / f"driver-{job_id}.log"
    study = open_study(plan, build_fallback(plan), build_pruner(plan.pruner))
    study.set_user_attr(attrs.DRIVER_JOB, {"job_id": job_id, "log": str(log_path),
                                           "script": str(script), "submitted": time.time()})
    url = redact_url(plan.storage_url or "")
    print("\n".join([
        f"driver submitted as SLURM job {job_id} (sbatch --requeue): the sweep runs there and "
        "survives this session.",
        f"  log:    {log_path}",
        f"  script: {script}",
        f"  watch:  python -m hpo.status --storage {url} --study {plan.study_name}",
        f"  stop:   scancel {job_id}   (trial jobs in flight: hydra.sweeper.on_interrupt="
        f"{plan.on_interrupt})",
    ]), flush=True)
    return []


def requeue_self() -> None:
    """Requeue the SLURM job this driver runs in (after USR1: its time limit is near)."""
    job = os.environ.get(ENV_DRIVER_JOB)
    if not job:
        return
    try:
        subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                       timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:  # the line printed next says rerun
        log.debug("scontrol requeue %s failed: %s", job, exc)
