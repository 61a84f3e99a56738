"""Run several command lines of Python programs in ONE process: the stack is imported once.

    python tests/apps/cli_batch.py RUNS.json RESULTS.json

RUNS.json is a list of ``{"argv": [...], "cwd": "...", "env": {...}}``; ``argv`` is what follows
``python`` (``["-m", "hpo.train", ...]`` or ``["app.py", ...]``). Each run gets its own working
directory, environment (replaced whole) and ``sys.argv``; its stdout and stderr are redirected
at the file-descriptor level (handlers bound to the old streams write there too), and Hydra's
global state is cleared before it. RESULTS.json gets one ``{"returncode", "stdout", "stderr"}``
per run, in order: the exit code as ``python`` would give it (``SystemExit``'s code, 1 and a
traceback on stderr for an uncaught exception).

For command lines that end quickly (bad input, ``--help``, ``--cfg``): what takes the time there
is importing the stack, ~10 s per process. A run that leaves threads or child processes behind
does not belong in a batch.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
from typing import Any


def _run(argv: list[str]) -> int:
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.modules.pop(argv[1], None)  # run as __main__ afresh, as python -m would
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # reported as python would: a traceback and exit 1
        traceback.print_exc()
        return 1
    return 0


def _reset() -> None:
    try:
        from hydra.core.global_hydra import GlobalHydra
    except ImportError:
        return
    GlobalHydra.instance().clear()


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+b") as out, tempfile.TemporaryFile("w+b") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            os.environ.clear()
            os.environ.update(run["env"])
            os.chdir(run["cwd"])
            _reset()
            code = _run(run["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
        out.seek(0)
        err.seek(0)
        return {"returncode": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def main() -> None:
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    results = [run_one(run) for run in runs]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
