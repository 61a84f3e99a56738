"""SLURM helpers of the sweeper: one-line errors for rejected jobs, and the sbatch preview.

Both work from what hydra-submitit-launcher and submitit already do: the launcher's ``params``
(the ``hydra.launcher`` node) become an ``AutoExecutor``'s parameters; submitit writes an sbatch
file and runs ``sbatch`` on it. When sbatch refuses the job, submitit raises ``FailedJobError``
with sbatch's stderr, chained to a ``CalledProcessError`` whose command names the sbatch file.
:func:`rejection_error` reads both and says which ``hydra.launcher`` key to change.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import ConfigError

__all__ = ["lost_job_reason", "rejection_error", "sbatch_preview"]

log = logging.getLogger(__name__)

# sbatch flag -> the hydra.launcher key that sets it (hydra-submitit-launcher's names)
_LAUNCHER_KEY = {
    "mem": "mem_gb",
    "mem-per-cpu": "mem_per_cpu",
    "mem-per-gpu": "mem_per_gpu",
    "partition": "partition",
    "gpus-per-node": "gpus_per_node",
    "gpus-per-task": "gpus_per_task",
    "gres": "gres",
    "cpus-per-task": "cpus_per_task",
    "cpus-per-gpu": "cpus_per_gpu",
    "ntasks-per-node": "tasks_per_node",
    "nodes": "nodes",
    "time": "timeout_min",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "exclude": "exclude",
}
# hydra.launcher keys that are not sbatch options (submitit's own, or the executor's init)
_INIT_KEYS = {"submitit_folder", "max_num_timeout"}
# hydra-submitit-launcher's BaseQueueConf keys: passed to AutoExecutor without a prefix
_GENERIC_KEYS = {
    "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
    "name", "stderr_to_stdout",
}
# AutoExecutor's generic names -> SlurmExecutor's (submitit's equivalence table)
_GENERIC_TO_SLURM = {
    "name": "job_name",
    "timeout_min": "time",
    "mem_gb": "mem",
    "tasks_per_node": "ntasks_per_node",
}
_SBATCH_TIMEOUT_S = 10


# ------------------------------------------------------------------------------ rejections
@dataclass(frozen=True)
class _Rejected:
    """What sbatch refused: its error lines and the #SBATCH options of the refused script."""

    errors: list[str]
    options: dict[str, str]

    def has(self, *needles: str) -> bool:
        text = "\n".join(self.errors).lower()
        return any(n.lower() in text for n in needles)

    def setting(self, flag: str) -> str | None:
        """``hydra.launcher.<key>=<value>`` for an sbatch flag the script set, else None."""
        if flag not in self.options:
            return None
        key = _LAUNCHER_KEY.get(flag, flag.replace("-", "_"))
        return f"hydra.launcher.{key}={_launcher_value(flag, self.options[flag])}"

    def settings(self, *flags: str) -> list[str]:
        """The settings of ``flags`` the script set, leaving out counts of 1 (the default)."""
        return [s for f in flags if (s := self.setting(f)) and self.options.get(f) != "1"]


def rejection_error(exc: BaseException, *, resource_class: str | None = None,
                    class_keys: Collection[str] = ()) -> Exception | None:
    """A :class:`~hpo.errors.ConfigError` when SLURM refused to queue the job; None otherwise.

    Recognises sbatch's refusals (memory, partition, GPUs/gres, CPUs, account, QOS, time limit,
    features, node configuration, permission, submit limits) in the exception submitit raises
    from ``sbatch``, and a launcher used where SLURM is not installed. The message is one line
    naming the ``hydra.launcher`` setting and the fix. Anything else (a job that ran and died,
    a controller that did not answer) gives None: the sweeper treats it as a lost job and
    retries it.

    Args:
        exc: The exception ``launcher.launch`` raised for one job.
        resource_class: The ``hydra.sweeper.resources`` class of the job, named in the
            message.
        class_keys: The launcher keys that class sets: the message names them as the
            class's settings (``hydra.sweeper.resources['model=large'].mem_gb``).

    Returns:
        The error to stop the sweep with, or None.
    """
    if _no_slurm_here(exc):
        return ConfigError(
            "hydra/launcher=submitit_slurm needs SLURM's sbatch and srun on PATH, and they are "
            "not there: run the sweep on a login node of the cluster, or use "
            "hydra/launcher=submitit_local"
        )
    rejected = _find_rejection(exc)
    if rejected is None:
        return None
    message = _explain(rejected)
    if message is None:
        return None
    if resource_class is not None:
        for key in class_keys:
            message = re.sub(rf"hydra\.launcher\.{re.escape(key)}\b",
                             f"hydra.sweeper.resources[{resource_class!r}].{key}", message)
        return ConfigError(f"SLURM rejected the job of resource class {resource_class!r}: "
                           f"{message}")
    return ConfigError(f"SLURM rejected the job: {message}")


def lost_job_reason(exc: BaseException) -> str | None:
    """One line for a SLURM job that ended without a result, e.g. ``SLURM job 40 ended
    CANCELLED by 0 without a result``; None when ``exc`` is not submitit's
    "has not produced any output" error.

    submitit puts the job's final state on the second line of its message, which a first-line
    summary would lose.
    """
    for e in _chain(exc):
        m = re.search(r"Job (\S+) \(task: \d+\).*?has not produced any output \(state: ([^)]*)\)",
                      str(e), re.DOTALL)
        if m:
            return f"SLURM job {m.group(1)} ended {m.group(2).strip()} without a result"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _no_slurm_here(exc: BaseException) -> bool:
    for e in _chain(exc):
        text = str(e)
        if 'Could not detect "srun"' in text:  # submitit's SlurmExecutor without SLURM
            return True
        if isinstance(e, FileNotFoundError) and "sbatch" in text:
            return True
    return False


def _find_rejection(exc: BaseException) -> _Rejected | None:
    errors: list[str] = []
    script: Path | None = None
    for e in _chain(exc):
        texts = [str(e)]
        if isinstance(e, subprocess.CalledProcessError):
            texts += [_text(e.stderr), _text(e.output)]
            cmd = e.cmd if isinstance(e.cmd, list | tuple) else shlex.split(str(e.cmd))
            if cmd and Path(str(cmd[0])).name == "sbatch" and len(cmd) > 1:
                script = Path(str(cmd[-1]))
        for text in texts:
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("sbatch: error:") and line not in errors:
                    errors.append(line)
    if not errors:
        return None
    options: dict[str, str] = {}
    if script is not None:
        try:
            options = _sbatch_options(script.read_text())
        except OSError:
            log.debug("cannot read the refused sbatch file %s", script)
    return _Rejected(errors=errors, options=options)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _sbatch_options(script: str) -> dict[str, str]:
    """``{flag: value}`` of the ``#SBATCH --flag=value`` lines of a script (flags without value
    map to ``"true"``)."""
    options = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s](.*))?$", line.strip())
        if m:
            value = (m.group(2) or "true").strip()
            with_quotes = shlex.split(value) if value else [""]
            options[m.group(1)] = with_quotes[0] if len(with_quotes) == 1 else value
    return options


def _launcher_value(flag: str, value: str) -> str:
    """The value as written in hydra.launcher: ``--mem=64GB`` is ``mem_gb=64``."""
    if flag == "mem":
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value, re.IGNORECASE)
        if m:
            scale = {"": 1 / 1024, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}
            gb = float(m.group(1)) * scale[m.group(2).upper()]
            return f"{gb:g}"
    return value


def _explain(r: _Rejected) -> str | None:
    """One sentence for a rejection: the setting, what the cluster offers, and the fix."""
    partition = r.options.get("partition")
    default = _default_partition() if partition is None else None
    where = (f"partition {partition}" if partition else
             f"partition {default} (the default)" if default else "the default partition")
    nodes = _partition_nodes(partition)
    if r.has("invalid partition", "invalid partition name"):
        known = ", ".join(_partitions()) or "see sinfo -s"
        shown = partition or "(default)"
        return (
            f"partition {shown!r} does not exist (hydra.launcher.partition={shown}): set "
            f"hydra.launcher.partition to one of: {known}"
        )
    if r.has("memory specification can not be satisfied", "memory required by task"):
        setting = r.setting("mem") or r.setting("mem-per-cpu") or r.setting("mem-per-gpu")
        have = f" (nodes have {nodes.mem_gb} GB)" if nodes and nodes.mem_gb is not None else ""
        key = (setting or "hydra.launcher.mem_gb=").split("=", 1)[0]
        return (
            f"{setting or 'the requested memory'} cannot be satisfied on {where}{have}: "
            f"lower {key}"
        )
    if r.has("invalid generic resource"):
        setting = r.setting("gpus-per-node") or r.setting("gpus-per-task") or r.setting("gres")
        key = (setting or "hydra.launcher.gpus_per_node=").split("=", 1)[0]
        have = f" (its nodes have gres: {nodes.gres})" if nodes and nodes.gres else ""
        return (
            f"{setting or 'the requested GPUs/gres'} is not available on {where}{have}: set "
            f"{key}=null (CPU only) or choose a GPU partition with hydra.launcher.partition"
        )
    if r.has("more processors requested than permitted", "cpu count per node can not be"):
        asked = r.settings("cpus-per-task", "ntasks-per-node", "nodes")
        have = f" (nodes have {nodes.cpus} CPUs)" if nodes and nodes.cpus else ""
        return (
            f"{' '.join(asked) or 'the requested CPUs'} asks for more CPUs than {where} "
            f"permits{have}: lower hydra.launcher.cpus_per_task (or tasks_per_node, nodes)"
        )
    if r.has("invalid account"):
        setting = r.setting("account") or "hydra.launcher.account=(default)"
        return (
            f"{setting} is not an account you may use on {where}: set hydra.launcher.account "
            "to one of yours (sacctmgr show assoc user=$USER format=account,partition)"
        )
    if r.has("invalid qos"):
        setting = r.setting("qos") or "hydra.launcher.qos=(default)"
        return (
            f"{setting} is not a QOS you may use on {where}: set hydra.launcher.qos to one of "
            "yours (sacctmgr show assoc user=$USER format=qos) or leave it unset"
        )
    if r.has("job violates accounting/qos policy", "qosmaxsubmitjob", "assocmaxsubmitjob"):
        return (
            f"the job breaks an accounting/QOS limit of {where} (e.g. jobs per user, size or "
            "time): lower hydra.sweeper.n_jobs or the resources in hydra.launcher, or pick "
            "another hydra.launcher.qos"
        )
    if r.has("requested time limit", "time limit is invalid"):
        setting = r.setting("time") or "hydra.launcher.timeout_min"
        limit = f" (its limit is {nodes.time_limit})" if nodes and nodes.time_limit else ""
        return (
            f"{setting} exceeds the time limit of {where}{limit}: lower "
            "hydra.launcher.timeout_min"
        )
    if r.has("invalid feature"):
        setting = r.setting("constraint") or "hydra.launcher.constraint"
        return (
            f"{setting} names a node feature no node of {where} has: fix or remove "
            "hydra.launcher.constraint (sinfo -o '%P %f' lists the features)"
        )
    if r.has("node count specification invalid"):
        setting = r.setting("nodes") or "hydra.launcher.nodes"
        return f"{setting} is more nodes than {where} has: lower hydra.launcher.nodes"
    if r.has("access/permission denied", "not permitted to use this partition",
             "user's group not permitted"):
        return (
            f"you may not submit to {where}: choose another hydra.launcher.partition, or set "
            "hydra.launcher.account to an account allowed there"
        )
    if r.has("requested node configuration is not available"):
        asked = r.settings("cpus-per-task", "ntasks-per-node", "nodes", "mem", "constraint",
                           "exclude", "nodelist")
        shown = " ".join(asked) if asked else "the requested resources"
        have = f" (nodes have {nodes.describe()})" if nodes else ""
        return (
            f"no node of {where} offers {shown}{have}: lower those hydra.launcher settings or "
            "choose another hydra.launcher.partition"
        )
    return None  # transient or unknown (controller down, socket timeout): a lost job


@dataclass(frozen=True)
class _Nodes:
    mem_gb: int | None
    cpus: int | None
    gres: str | None
    time_limit: str | None

    def describe(self) -> str:
        parts = []
        if self.cpus:
            parts.append(f"{self.cpus} CPUs")
        if self.mem_gb is not None:
            parts.append(f"{self.mem_gb} GB")
        if self.gres:
            parts.append(f"gres {self.gres}")
        return ", ".join(parts) or "unknown resources"


def _sinfo(fields: str, partition: str | None = None) -> list[str]:
    """Lines of ``sinfo -h -o FIELDS`` (empty when sinfo is missing or fails)."""
    if shutil.which("sinfo") is None:
        return []
    cmd = ["sinfo", "-h", "-o", fields, *(["-p", partition] if partition else [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_SBATCH_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]


def _partitions() -> list[str]:
    """Partition names; the default one is marked ``(default)``."""
    names: list[str] = []
    for line in _sinfo("%P"):
        name = f"{line[:-1]} (default)" if line.endswith("*") else line
        if name not in names:
            names.append(name)
    return names


def _default_partition() -> str | None:
    return next((p.split(" ")[0] for p in _partitions() if p.endswith("(default)")), None)


def _partition_nodes(partition: str | None) -> _Nodes | None:
    """The largest node of ``partition`` (or of the default one), from sinfo."""
    lines = _sinfo("%P|%m|%c|%G|%l", partition)
    if partition is None:
        lines = [ln for ln in lines if ln.split("|", 1)[0].endswith("*")]
    best: _Nodes | None = None
    for line in lines:
        parts = line.split("|")
        if len(parts) != 5:
            continue
        mem = _int(parts[1].rstrip("+"))
        cpus = _int(parts[2].rstrip("+"))
        gres = parts[3] if parts[3] not in ("(null)", "") else None
        node = _Nodes(mem_gb=mem // 1024 if mem is not None else None, cpus=cpus, gres=gres,
                      time_limit=parts[4] if parts[4] not in ("infinite", "") else None)
        if best is None or (node.mem_gb or 0) > (best.mem_gb or 0):
            best = node
    return best


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------ preview
def sbatch_preview(params: dict[str, Any], overrides: list[str]) -> str:
    """The sbatch script submitit would write for one job of these launcher params.

    Follows hydra-submitit-launcher's ``launch`` (``AutoExecutor(cluster="slurm")`` with the
    same parameters) and renders with submitit's own template, so the text is what the job
    would be submitted with; nothing is written or submitted, and SLURM need not be installed.
    The trial's overrides are not part of the script (they travel in the job's pickle): they
    follow it as a comment. If submitit's (private) renderer is unavailable, an approximation
    is returned, marked as such in its first comment.

    Args:
        params: The submitit launcher's ``params`` (the resolved ``hydra.launcher`` node).
        overrides: The trial's Hydra overrides.

    Returns:
        The script text.
    """
    folder = Path(str(params.get("submitit_folder", ".submitit/%j"))).expanduser().absolute()
    parameters = _slurm_parameters(params)
    command = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )
    try:
        from submitit.slurm import slurm as submitit_slurm

        mem = parameters.get("mem")
        if mem is not None and not isinstance(mem, str):
            parameters["mem"] = submitit_slurm._convert_mem(float(mem))
        script = submitit_slurm._make_sbatch_string(command=command, folder=folder, **parameters)
    except Exception as exc:  # submitit changed its private renderer: show what we know
        log.debug("submitit could not render the sbatch script", exc_info=True)
        script = _approximate_script(command, folder, parameters, exc)
    shown = " ".join(shlex.quote(o) for o in overrides) if overrides else "(none)"
    return f"{script.rstrip()}\n# trial overrides (carried in the job's pickle): {shown}\n"


def _slurm_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The SlurmExecutor parameters the launcher's params become (None = not set)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in _INIT_KEYS or key.startswith("_") or value is None:
            continue
        out[_GENERIC_TO_SLURM.get(key, key) if key in _GENERIC_KEYS else key] = value
    if isinstance(out.get("additional_parameters"), dict) and not out["additional_parameters"]:
        out.pop("additional_parameters")
    return out


def _approximate_script(
    command: str, folder: Path, parameters: dict[str, Any], exc: BaseException
) -> str:
    skip = {"setup", "teardown", "additional_parameters", "signal_delay_s", "array_parallelism",
            "stderr_to_stdout", "srun_args", "use_srun"}
    flags = {k.replace("_", "-"): v for k, v in parameters.items() if k not in skip}
    if isinstance(flags.get("mem"), int | float):
        flags["mem"] = f"{flags['mem']}GB"
    flags["signal"] = f"USR2@{parameters.get('signal_delay_s', 90)}"
    flags.update(parameters.get("additional_parameters") or {})
    lines = ["#!/bin/bash",
             f"# approximation: submitit could not render the script ({type(exc).__name__})",
             "# Parameters"]
    lines += [f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in sorted(flags.items())]
    lines += list(parameters.get("setup") or [])
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=slurm",
              f"srun --unbuffered --output {folder}/%j_%t_log.out {command}", ""]
    return "\n".join(lines)
