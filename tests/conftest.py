"""Shared test helpers: run the CLI in a subprocess with a clean environment, service fixtures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from _services import *  # noqa: F403

# Started in the background of a shell without job control (`cmd &` in a script, nohup), the
# test session inherits SIGINT ignored, and so would every process it starts: hpo (like python)
# leaves an ignored SIGINT alone, so the tests of Ctrl-C would see no interrupt. Tests run as
# from a terminal: SIGINT raises KeyboardInterrupt here, and its children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

K = TypeVar("K")
REPO_ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "apps"
LLM_ENV_VARS = (
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY",
    "OPENROUTER_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: no LLM credentials unless given, short Hydra errors."""
    env = {k: v for k, v in os.environ.items() if k not in LLM_ENV_VARS}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update({"PYTHONUNBUFFERED": "1", "HPO_NO_RICH": "1"})
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` in ``cwd``; on an unexpected exit code show its output."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env or clean_env(), capture_output=True,
        text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"exit {proc.returncode}: python {' '.join(args)}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def run_cli_batch(
    runs: Mapping[K, tuple[Sequence[str], Path, dict[str, str] | None]],
    *,
    timeout: float = 600,
) -> dict[K, subprocess.CompletedProcess[str]]:
    """Run several ``python <args>`` command lines (``key: (args, cwd, env)``), in order, in ONE
    process; the result of each under its key.

    For command lines that end quickly (bad input, ``--help``, ``--cfg``): the stack is imported
    once instead of once per command (~10 s each). ``tests/apps/cli_batch.py`` gives each run its
    own cwd, environment, argv and fd-level stdout/stderr, and the exit code python would give.
    """
    spec = [{"argv": list(args), "cwd": str(cwd), "env": env or clean_env()}
            for args, cwd, env in runs.values()]
    with tempfile.TemporaryDirectory(prefix="hpo-batch-") as tmp:
        src, dst = Path(tmp) / "runs.json", Path(tmp) / "results.json"
        src.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, str(APPS / "cli_batch.py"), str(src), str(dst)],
                              env=clean_env(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not dst.exists():
            pytest.fail(f"the batch of {len(spec)} command lines failed (exit "
                        f"{proc.returncode})\n--- stderr\n{proc.stderr[-6000:]}")
        results = json.loads(dst.read_text())
    return {key: subprocess.CompletedProcess([sys.executable, *run["argv"]], r["returncode"],
                                             r["stdout"], r["stderr"])
            for key, run, r in zip(runs, spec, results, strict=True)}


@pytest.fixture
def quadratic_app() -> str:
    """Path of a plain Hydra app (no hpo config) that selects hydra/sweeper=hpo."""
    return str(APPS / "quadratic" / "app.py")
