"""SIGINT, SIGTERM and SIGHUP on the driver: one exception, raised where it is safe.

:class:`Guard` replaces the handlers of those signals (in the main thread) while a sweep runs.
The first signal raises :class:`Interrupted` in the main thread, unless the thread is inside a
:meth:`Guard.critical` section (a job submitted and its id recorded, a result told): then it is
raised when the section ends, so storage never holds half of an event. Later signals are
ignored while the driver cleans up. A driver that runs as a SLURM job (``hydra.sweeper.detach``)
also takes USR1, the notice SLURM sends before its time limit: the driver requeues its own job.

What the driver does with its trials in flight is the slot loop's business; how the process
ends (one line, exit status 128 + signal) is :func:`exit_interrupted`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from ._detach import ENV_DRIVER_JOB

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """The driver received ``signum``; raised in the main thread.

    Attributes:
        signum: The signal.
        requeue: The driver runs as a SLURM job that asked to be requeued (USR1 before its
            time limit): keep the jobs in flight and requeue the driver's job.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.requeue = signum == signal.SIGUSR1

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by the signal: 128 + its number."""
        return 128 + self.signum


class Guard:
    """Turns the driver's stop signals into :class:`Interrupted` (see the module docstring).

    A context manager; it does nothing outside the main thread, and leaves alone a signal
    that is ignored (``nohup`` ignores SIGHUP).
    """

    def __init__(self) -> None:
        self.fired: int | None = None
        self._depth = 0
        self._pending: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Guard:
        if threading.current_thread() is not threading.main_thread():
            return self
        signals = list(_SIGNALS)
        if os.environ.get(ENV_DRIVER_JOB):
            signals.append(signal.SIGUSR1)
        for sig in signals:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            self._saved[sig] = current
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._saved.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._saved.clear()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section a signal does not cut: it is raised when the outermost section ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self._pending is not None:
            pending, self._pending = self._pending, None
            raise Interrupted(pending)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired is not None:
            return  # the driver is already stopping
        self.fired = signum
        if self._depth > 0:
            self._pending = signum
            return
        raise Interrupted(signum)


def signal_name(signum: int) -> str:
    """``SIGINT`` for 2."""
    return signal.Signals(signum).name


def interrupt_line(finished: int | None, in_flight: int) -> str:
    """The one line an interrupted driver prints."""
    if finished is None:
        return "interrupted before any trial started; rerun the same command to resume"
    return (f"interrupted: {finished} finished, {in_flight} in flight; rerun the same command "
            "to resume")


def exit_interrupted(line: str, code: int) -> None:
    """Print ``line`` on stderr and end the process with ``code`` at once.

    Slot threads may still block on jobs (an in-process trial, submitit polling), and Python
    would join them at exit: the process ends through ``os._exit`` after flushing the logs
    and the standard streams. Storage is written by then (every write is its own commit).
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    os._exit(code)
