"""Supervising the program: start it in a session of its own, copy its output, poll, stop it.

The child runs in the trial's output directory with ``stdin`` closed; both output streams are
copied line by line (secret values masked) to ``program.log`` and to the log. A timeout or a
stop request (pruning) ends its whole process group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hpo.tasks.command.errors import CommandError, CommandFailedError, CommandTimeoutError

__all__ = ["LOG_FILE", "Exit", "failure", "kill_group", "supervise"]

log = logging.getLogger(__name__)

LOG_FILE = "program.log"
_STDERR_TAIL = 5
TERM_GRACE_S = 5.0


@dataclass(frozen=True)
class Exit:
    """How the program ended.

    Args:
        code: Its exit code (negative: killed by that signal).
        seconds: How long it ran.
        stderr_tail: Its last non-empty standard-error lines.
        stopped: Whether it was stopped because ``on_poll`` asked to.
    """

    code: int
    seconds: float
    stderr_tail: list[str] = field(default_factory=list)
    stopped: bool = False


def supervise(
    args: Sequence[str] | str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    on_poll: Callable[[], bool] | None = None,
    secrets: Sequence[str] = (),
    echo_level: int = logging.INFO,
    grace_s: float = TERM_GRACE_S,
) -> Exit:
    """Run the program to its end (or until stopped) and say how it ended.

    Args:
        args: An argument list (no shell), or a command line for ``/bin/sh -c``.
        cwd: Its working directory (``program.log`` is appended there).
        env: Its whole environment.
        timeout_s: Kill it after this many seconds; None for no limit.
        poll_s: Seconds between calls of ``on_poll`` while it runs.
        on_poll: Called every ``poll_s`` while it runs; True stops it (``Exit.stopped``).
        secrets: Values masked as ``***`` in the copied output.
        echo_level: Level at which its output lines are logged.
        grace_s: Seconds between SIGTERM and SIGKILL when stopping it.

    Raises:
        CommandError: It cannot be started.
        CommandTimeoutError: It ran past ``timeout_s`` (it was killed).
    """
    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    lock = threading.Lock()
    started = time.monotonic()
    stopped = False
    with open(cwd / LOG_FILE, "a", encoding="utf-8") as sink:
        try:
            proc = subprocess.Popen(
                args, shell=isinstance(args, str), cwd=cwd, env=dict(env),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as exc:
            first = "/bin/sh" if isinstance(args, str) else args[0]
            raise CommandError(
                f"cannot start {first!r}: {exc.strerror or exc}; check command.argv[0] (use "
                "{python} for this interpreter, or an absolute path)"
            ) from None
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            _Pump(proc.stdout, "stdout", sink, lock, list(secrets), echo_level),
            _Pump(proc.stderr, "stderr", sink, lock, list(secrets), echo_level, tail),
        ]
        for p in pumps:
            p.start()
        try:
            while True:
                waited = poll_s
                if timeout_s is not None:
                    left = timeout_s - (time.monotonic() - started)
                    if left <= 0:
                        kill_group(proc, grace_s)
                        raise CommandTimeoutError(
                            f"the command ran past command.timeout_s={timeout_s:g} s and "
                            "was killed: raise the timeout or make the run shorter"
                        )
                    waited = min(waited, left)
                try:
                    proc.wait(timeout=waited)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if on_poll is not None and on_poll():
                    stopped = True
                    kill_group(proc, grace_s)
                    break
        finally:
            kill_group(proc, grace_s)  # its children, if it left any behind
            for p in pumps:
                p.join(timeout=10.0)
    seconds = time.monotonic() - started
    code = int(proc.returncode)
    log.log(echo_level, "the command %s with code %d after %.1f s",
            "was stopped" if stopped else "exited", code, seconds)
    return Exit(code=code, seconds=seconds, stderr_tail=list(tail), stopped=stopped)


def failure(end: Exit) -> CommandFailedError:
    """The one-line error of a program that exited non-zero: code (or signal), time, and the
    last lines of its standard error."""
    what = f"exited with code {end.code}"
    if end.code < 0:
        with contextlib.suppress(ValueError):
            what = f"was killed by {signal.Signals(-end.code).name}"
    detail = " | ".join(end.stderr_tail)[-400:] if end.stderr_tail else "nothing on stderr"
    return CommandFailedError(
        f"the command {what} after {end.seconds:.1f} s: {detail} (full output in {LOG_FILE})"
    )


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace_s``; a finished leader's
    stragglers are killed at once."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


class _Pump(threading.Thread):
    """Copy one output stream of the child to the log and to ``program.log``, line by line."""

    def __init__(self, stream: IO[bytes], name: str, sink: IO[str], lock: threading.Lock,
                 secrets: list[str], level: int, tail: deque[str] | None = None) -> None:
        super().__init__(name=f"hpo-command-{name}", daemon=True)
        self.stream, self.name, self.sink, self.lock = stream, name, sink, lock
        self.secrets, self.level, self.tail = secrets, level, tail

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            for secret in self.secrets:
                line = line.replace(secret, "***")
            if self.tail is not None and line.strip():
                self.tail.append(line.strip())
            log.log(self.level, "[stderr] %s" if self.name == "stderr" else "| %s", line)
            with self.lock:
                self.sink.write(line + "\n")
                self.sink.flush()
        self.stream.close()
