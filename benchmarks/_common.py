"""Shared helpers of the benchmark scripts: tables, machine info, subprocesses, the peer venv.

The scripts run with hpo's venv (``python benchmarks/bench_*.py``); this module imports nothing
heavy so that every script starts fast.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
NOOP_APP = BENCH_DIR / "apps" / "noop" / "app.py"
PEER_VENV = BENCH_DIR / ".venv-peer"
# What the peer venv gets from PyPI: hydra-optuna-sweeper needs optuna<3 (and SQLAlchemy<2 for
# RDB storages); hydra-core pinned as in hpo, submitit launcher for the barrier benchmark.
PEER_REQUIREMENTS = (
    "hydra-optuna-sweeper==1.3.*",
    "optuna<3",
    "sqlalchemy<2",
    "hydra-core==1.3.8",
    "hydra-submitit-launcher==1.2.*",
)
LLM_ENV_VARS = (
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY",
    "OPENROUTER_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL",
)


# ------------------------------------------------------------------------------------ tables
@dataclass
class Table:
    """A Markdown table printed to stdout (pastes as is into docs/benchmarks.md)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        """Append a row; floats are printed with 3 significant digits (at least 1 decimal)."""
        if len(cells) != len(self.columns):
            raise ValueError(
                f"row {cells!r} has {len(cells)} cells for {len(self.columns)} columns: "
                "give one cell per column"
            )
        self.rows.append([fmt(c) for c in cells])

    def render(self) -> str:
        """The table as Markdown text, columns padded to align."""
        widths = [
            max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
            for i, c in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [f"### {self.title}", "", line(self.columns)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += [line(r) for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)

    def print(self) -> None:
        """Print the table (and flush, so that a pipe sees it at once)."""
        print(self.render() + "\n", flush=True)


def fmt(value: Any) -> str:
    """A table cell: floats with 3 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def machine_info() -> str:
    """One line about this machine: CPU, cores, load, Python, key package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}; {cores} cores; load avg {load}; Python {platform.python_version()}; "
        f"{platform.system()} {platform.release()}"
    )


def header(name: str, args: argparse.Namespace) -> None:
    """Print what runs, where and with which arguments."""
    argv = " ".join(sys.argv[1:])
    print(f"## {name}\n", flush=True)
    print(f"- command: `python benchmarks/{Path(sys.argv[0]).name} {argv}`".rstrip(), flush=True)
    print(f"- machine: {machine_info()}", flush=True)
    print(f"- started: {time.strftime('%Y-%m-%d %H:%M:%S')}\n", flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has (``--quick``, ``--json``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a result")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def setup_logging(verbose: bool) -> None:
    """Benchmark progress on stderr; tables on stdout."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def progress(msg: str) -> None:
    """A progress line on stderr (tables stay alone on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_json(path: Path | None, tables: Iterable[Table]) -> None:
    """Write ``tables`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path is None:
        return
    doc = [
        {"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes}
        for t in tables
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), "tables": doc}, indent=2) + "\n")


def parse_ints(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``; raises with the bad value."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers: write e.g. 200,2000"
        ) from None
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"{text!r} must list integers >= 1: write e.g. 200,2000")
    return out


# ------------------------------------------------------------------------------- subprocesses
def clean_env(**extra: str) -> dict[str, str]:
    """This environment without LLM credentials or endpoints, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LLM_ENV_VARS}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update({"PYTHONUNBUFFERED": "1", "HPO_NO_RICH": "1"})
    env.update(extra)
    return env


@dataclass
class Ran:
    """A finished command: its output, wall time and CPU time (user + system, its children too)."""

    proc: subprocess.CompletedProcess[str]
    wall_s: float
    cpu_s: float


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600,
) -> Ran:
    """Run ``cmd`` and wait for it; CPU time counts the process tree it waited for.

    Raises:
        RuntimeError: The command failed (its output's tail is in the message).
    """
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=dict(env) if env is not None else None,
        capture_output=True, text=True, timeout=timeout,
    )
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(
            f"exit {proc.returncode}: {' '.join(str(c) for c in cmd)}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
        )
    return Ran(proc=proc, wall_s=wall, cpu_s=cpu)


@dataclass(frozen=True)
class Stamp:
    """One job of the no-op app: number, wall-clock start and end, process CPU time at start."""

    num: int
    start: float
    end: float
    cpu: float


def read_stamps(path: Path) -> list[Stamp]:
    """Every job the no-op app recorded, by start time."""
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        num, start, end, cpu = ln.split()
        rows.append(Stamp(int(num), float(start), float(end), float(cpu)))
    return sorted(rows, key=lambda r: r.start)


def per_trial_s(
    starts: Sequence[float], *, tail: float | None = None, median: bool = True
) -> float:
    """Seconds per trial between consecutive job starts (the steady-state cost of a trial).

    The median resists the stalls other processes on a shared machine cause; the mean is the
    throughput.

    Args:
        starts: Job start times, sorted.
        tail: Only the last fraction of the intervals (e.g. 0.1), to see growth within a run.
        median: The median gap (default) rather than the mean.
    """
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    if not gaps:
        return float("nan")
    if tail is not None:
        gaps = gaps[-max(1, int(len(gaps) * tail)):]
    return statistics.median(gaps) if median else statistics.fmean(gaps)


# ---------------------------------------------------------------------------- the peer venv
def ensure_peer_venv(venv: Path = PEER_VENV, *, recreate: bool = False) -> Path:
    """The Python of a venv with hydra-optuna-sweeper 1.3 (optuna<3), created when missing.

    Built with ``python -m venv`` and ``pip install`` from the configured package index.

    Raises:
        RuntimeError: The venv or the install failed.
    """
    py = venv / "bin" / "python"
    if recreate and venv.exists():
        shutil.rmtree(venv)
    if py.exists():
        try:
            subprocess.run(
                [str(py), "-c", "import hydra_plugins.hydra_optuna_sweeper, optuna"],
                check=True, capture_output=True, timeout=120,
            )
            return py
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            progress(f"peer venv {venv} is incomplete: recreating it")
            shutil.rmtree(venv)
    progress(f"creating the peer venv {venv} ({', '.join(PEER_REQUIREMENTS)})")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True,
                       capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"cannot build the peer venv {venv}: {exc.cmd} exited {exc.returncode}\n"
            f"{(exc.stderr or '')[-3000:]}\n(check the package index, or pass --no-peer)"
        ) from exc
    return py


def peer_versions(py: Path) -> str:
    """``hydra-optuna-sweeper X, optuna Y, hydra-core Z`` of the peer venv."""
    code = (
        "from importlib.metadata import version as v;"
        "print(', '.join(f'{p} {v(p)}' for p in "
        "('hydra-optuna-sweeper', 'optuna', 'hydra-core', 'sqlalchemy')))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()
