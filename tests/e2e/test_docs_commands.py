"""A newcomer's run: the README's and every docs page's commands, in order, in one fresh folder.

The commands are read from the fenced shell blocks of the pages (so a changed page is tested as
it reads now), shrunk (``trainer=debug``, at most 2 trials and 2 slots) and run one after the
other in a single empty folder with no LLM key, as issue 16 will be checked. Commands that need
what a fresh folder cannot have are left out, each for a stated reason (:data:`SKIPS`).

Every command names no study, so each search space gets its own default study (the config
name plus a hash of the space, ``hpo.naming.default_study_name``): a later command over another
space must not fail on the clash ("keep the search space of a study"), which :class:`StudyClash`
reports apart from any other failure.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, clean_env, run_cli_batch

# the pages in the README's order (its "Docs:" line), the README first
PAGES = ("README.md", "docs/quickstart.md", "docs/your-project.md", "docs/configuration.md",
         "docs/agents.md", "docs/slurm.md", "docs/dashboard-and-reports.md",
         "docs/reliability.md", "docs/architecture.md", "docs/benchmarks.md",
         "docs/workloads.md", "docs/local-llm.md")
# modules a newcomer's command may run; others (servers, diagrams) are not part of the chain
RUN_MODULES = ("hpo.train", "hpo.best", "hpo.report")
# (substring of the command, why it is left out)
SKIPS: tuple[tuple[str, str], ...] = (
    ("hydra/launcher=",
     "needs a cluster or starts worker processes (tests/sweeper/test_slurm.py)"),
    ("...", "a placeholder, not a command"),
    ("/abs/", "needs a data file of the user's"),
    ("--config-name command", "runs from the repository root (examples/command)"),
    ("--config-dir conf", "runs inside examples/own_module (tests/e2e/test_examples.py)"),
    ("agent=local", "needs a local LLM server (tests/llm/test_local_llm.py)"),
    ("--help", "prints only (tests/e2e/test_train.py::test_help_describes_groups_and_sweep)"),
    ("--cfg", "prints only"),
    ("--study NAME", "names a study the reader picks (printed at the start of each sweep)"),
)
MAX_TRIALS = 2
CLASH = "keep the search space of a study"
_FENCE = re.compile(r"^```(\w*)\s*$")


class StudyClash(AssertionError):
    """A documented command failed on the stored study's search space."""


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


def page_commands(page: str) -> list[Command]:
    """The ``python -m hpo.*`` commands of a page's shell blocks (``\\`` lines joined, ``&&``
    chains split, comments dropped), in order."""
    out: list[Command] = []
    lang: str | None = None
    pending, start = "", 0
    for number, raw in enumerate((REPO_ROOT / page).read_text().splitlines(), start=1):
        fence = _FENCE.match(raw.strip())
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang not in ("bash", "sh", "console", ""):
            continue
        if not pending:
            start = number
        pending += raw.rstrip().removesuffix("\\") + " "
        if raw.rstrip().endswith("\\"):
            continue
        text, pending = pending, ""
        if "python -m hpo." not in text:
            continue
        tokens = shlex.split(text, comments=True)
        argv: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok != "&&":
                argv.append(tok)
                continue
            if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2] in RUN_MODULES:
                out.append(Command(page, start, tuple(argv)))
            argv = []
    return out


def skip_reason(cmd: Command) -> str | None:
    text = shlex.join(cmd.argv)
    return next((why for needle, why in SKIPS if needle in text), None)


def shrink(argv: tuple[str, ...]) -> list[str]:
    """The command, small: ``trainer=debug`` for training configs, at most
    :data:`MAX_TRIALS` trials and 2 slots for a sweep."""
    args = list(argv[3:])
    if argv[2] != "hpo.train":
        return [sys.executable, *argv[1:]]
    config = next((a.split("=", 1)[1] for a in args if a.startswith("--config-name=")), None)
    if "--config-name" in args:
        config = args[args.index("--config-name") + 1]
    if config in (None, "train", "forecast", "best") and not any(
            a.startswith("trainer=") for a in args):
        args.append("trainer=debug")
    if "-m" in args or "--multirun" in args:
        args = [a for a in args if not a.startswith(("hydra.sweeper.n_trials=",
                                                    "hydra.sweeper.n_jobs="))]
        args += [f"hydra.sweeper.n_trials={MAX_TRIALS}", "hydra.sweeper.n_jobs=1"]
    return [sys.executable, "-m", "hpo.train", *args]


def test_pages_yield_the_commands_a_reader_sees() -> None:
    """The extraction itself: continuation lines, ``&&`` chains, comments, skips."""
    readme = [str(c) for c in page_commands("README.md")]
    assert readme[0].endswith(": python -m hpo.train -m")  # after the install's &&
    assert any("model=mlp,cnn 'optimizer.lr=tag(log, interval(1e-5, 1e-1))' "
               "hydra.sweeper.n_trials=30" in c for c in readme)  # a `\` continuation joined
    assert not any("#" in c for c in readme)
    quick = page_commands("docs/quickstart.md")
    assert [c.argv[2] for c in quick][:3] == ["hpo.train", "hpo.train", "hpo.train"]
    assert any(c.argv[2] == "hpo.best" and "--export" in c.argv for c in quick)
    slurm = page_commands("docs/slurm.md")
    assert slurm and all(skip_reason(c) for c in slurm if "hydra/launcher=" in shlex.join(
        c.argv))
    assert shrink(("python", "-m", "hpo.train", "-m", "hydra.sweeper.n_trials=30"))[3:] == [
        "-m", "trainer=debug", f"hydra.sweeper.n_trials={MAX_TRIALS}", "hydra.sweeper.n_jobs=1"]


@pytest.mark.slow
def test_docs_commands_run_in_order_in_one_folder(tmp_path: Path) -> None:
    """The commands run one after the other in one Python process (tests/apps/cli_batch.py:
    each with its own argv, environment and output, as a fresh ``python`` would; the stack is
    imported once instead of once per command)."""
    env = clean_env(PYTHONPATH=str(REPO_ROOT / "src"))
    commands = [cmd for page in PAGES for cmd in page_commands(page) if not skip_reason(cmd)]
    # keyed by position: a line's ``&&`` chain may repeat a command
    done = run_cli_batch({i: (shrink(cmd.argv)[1:], tmp_path, env)
                          for i, cmd in enumerate(commands)}, timeout=1800)
    ran: list[str] = []
    for i, proc in done.items():
        cmd = commands[i]
        if proc.returncode != 0:
            output = proc.stdout[-2000:] + proc.stderr[-3000:]
            kind = StudyClash if CLASH in output else AssertionError
            raise kind(f"{cmd} failed (exit {proc.returncode}) after "
                       f"{len(ran)} commands ran:\n" + "\n".join(ran) + f"\n---\n{output}")
        ran.append(str(cmd))
    assert len(ran) >= 10, ran
