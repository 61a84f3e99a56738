"""Progress of a sweep as it runs: a rich live panel on a terminal, plain log lines elsewhere.

The sweeper's driver calls :class:`SweepProgress` from its main thread: ``trial_started`` after
each ask, ``trial_finished`` after each tell, ``close`` at the end. The panel shows the trial
counts against the budget, the best value so far, the last proposal's source and rationale and
the LLM tokens and cost spent; without a terminal (or with ``HPO_NO_RICH`` set, or
``hydra.sweeper.progress=false``) one INFO line per finished trial goes to the ``hpo.progress``
logger::

    trial 7 COMPLETE val/acc=0.9611 (best 0.9722 #3) source=llm 812 tok $0.0011 — Lower the ...

Each event reads at most the trial concerned and the study's user attrs; the counts are kept
here, so a big study costs no more per trial than a small one. Progress is cosmetic: an error
inside it is logged at DEBUG and never stops a sweep.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.attrs import (
    COST_USD,
    COST_USD_TOTAL,
    ERROR,
    FALLBACK_TOTAL,
    LLM_CALLS_TOTAL,
    RATIONALE,
    SOURCE,
    TOKENS_IN,
    TOKENS_IN_TOTAL,
    TOKENS_OUT,
    TOKENS_OUT_TOTAL,
)

__all__ = ["NO_RICH_ENV", "SweepProgress", "format_trial_line"]

log = logging.getLogger(__name__)

NO_RICH_ENV = "HPO_NO_RICH"
RATIONALE_CHARS = 80



class SweepProgress:
    """Live progress of one sweep (driver side).

    Args:
        study: The study being optimized.
        n_trials: The trial budget of the study (trials already in it count).
        n_jobs: Parallel slots.
        objective_names: One name per objective, e.g. ``["val/acc"]``.
        enabled: Show the live panel when stdout is a terminal; False forces log lines.

    Raises:
        ValueError: ``objective_names`` does not match the study's directions.
    """

    def __init__(
        self,
        *,
        study: optuna.Study,
        n_trials: int,
        n_jobs: int = 1,
        objective_names: Sequence[str],
        enabled: bool = True,
    ) -> None:
        names = list(objective_names)
        if len(names) != len(study.directions):
            raise ValueError(
                f"objective_names={names!r} has {len(names)} name(s) but the study has "
                f"{len(study.directions)} objective(s): give one name per objective"
            )
        self.study = study
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.objective_names = names
        self.directions = list(study.directions)
        self.counts: dict[TrialState, int] = {state: 0 for state in TrialState}
        self.running: set[int] = set()
        # best value and trial number per objective
        self.best: list[tuple[float, int] | None] = [None] * len(names)
        self.last_number: int | None = None
        self.last_source: str | None = None
        self.last_rationale: str | None = None
        self.totals: dict[str, Any] = {}
        self._started = time.monotonic()
        self._live: Any = None
        self._log_redirect: _LogRedirect | None = None
        self._seed_from_storage()
        if enabled and not os.environ.get(NO_RICH_ENV) and _is_terminal():
            self._start_live()

    # ------------------------------------------------------------------ events
    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        """A trial was asked and its job submitted."""
        self.running.add(number)
        if self._live is None:
            return
        try:
            study_id = self.study._study_id
            storage = self.study._storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            self._remember_proposal(storage.get_trial(trial_id))
            self._refresh()
        except Exception as exc:  # progress is cosmetic
            log.debug("progress: trial_started(%d) failed: %s", number, exc)

    def trial_finished(self, frozen: FrozenTrial) -> None:
        """A trial was told (or failed); ``frozen`` is its state after the tell."""
        try:
            self._count_finished(frozen)
            self._remember_proposal(frozen)
            if SOURCE in frozen.user_attrs:  # LLMSampler trials move the study totals
                storage = self.study._storage
                self.totals = dict(storage.get_study_user_attrs(self.study._study_id))
            if self._live is None:
                log.info("%s", format_trial_line(
                    frozen, objective_names=self.objective_names, best=self.best
                ))
            else:
                self._refresh()
        except Exception as exc:  # progress is cosmetic
            log.debug("progress: trial_finished(%d) failed: %s", frozen.number, exc)

    def close(self) -> None:
        """Stop the live panel (leaving its last state on screen); idempotent."""
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.update(self.render(), refresh=True)
            live.stop()
        except Exception as exc:
            log.debug("progress: closing the live panel failed: %s", exc)
        finally:
            if self._log_redirect is not None:
                self._log_redirect.restore()
                self._log_redirect = None

    # ------------------------------------------------------------------ rendering
    def render(self) -> Any:
        """The panel as a rich renderable (what the live display shows)."""
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True, min_width=6)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        c = self.counts
        finished = sum(c[s] for s in TrialState if s.is_finished())
        elapsed = _duration(time.monotonic() - self._started)
        grid.add_row("trials", Text(
            f"{finished}/{self.n_trials} finished · {c[TrialState.COMPLETE]} done · "
            f"{len(self.running)} running ({self.n_jobs} slots) · "
            f"{c[TrialState.PRUNED]} pruned · {c[TrialState.FAIL]} failed"
        ))
        grid.add_row("best", Text(_best_text(self.objective_names, self.best) or "—"))
        if self.last_number is not None and (self.last_source or self.last_rationale):
            last = Text(f"#{self.last_number} {self.last_source or 'unknown'}")
            if self.last_rationale:
                last.append(" — " + _one_line(self.last_rationale, RATIONALE_CHARS), "italic")
            grid.add_row("last", last)
        if any(key in self.totals for key in (LLM_CALLS_TOTAL, TOKENS_IN_TOTAL, COST_USD_TOTAL,
                                              FALLBACK_TOTAL)):
            tokens = int(self.totals.get(TOKENS_IN_TOTAL, 0) or 0) + int(
                self.totals.get(TOKENS_OUT_TOTAL, 0) or 0
            )
            grid.add_row("LLM", Text(
                f"{int(self.totals.get(LLM_CALLS_TOTAL, 0) or 0)} calls · {tokens:,} tokens · "
                f"${float(self.totals.get(COST_USD_TOTAL, 0.0) or 0.0):.4f} · "
                f"{int(self.totals.get(FALLBACK_TOTAL, 0) or 0)} fallback"
            ))
        title = Text(f"hpo sweep {self.study.study_name} · {elapsed}")
        return Panel(grid, title=title, expand=False)

    # ------------------------------------------------------------------ internals
    def _seed_from_storage(self) -> None:
        """Counts and best of the trials already in the study (one read, at start)."""
        try:
            trials = self.study.get_trials(deepcopy=False)
            self.totals = dict(self.study.user_attrs)
        except Exception as exc:
            log.debug("progress: reading the study failed: %s", exc)
            return
        for t in trials:
            if t.state == TrialState.RUNNING:
                continue  # the sweeper fails or adopts these; they are not ours
            self._count_finished(t)

    def _count_finished(self, frozen: FrozenTrial) -> None:
        self.running.discard(frozen.number)
        if not frozen.state.is_finished():
            return  # the job ended without a tell (the sweeper fails it later)
        self.counts[frozen.state] += 1
        if frozen.state != TrialState.COMPLETE or not frozen.values:
            return
        for i, (value, direction) in enumerate(zip(frozen.values, self.directions,
                                                   strict=False)):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            current = self.best[i]
            better = current is None or (
                value > current[0] if direction == StudyDirection.MAXIMIZE else value < current[0]
            )
            if better:
                self.best[i] = (float(value), frozen.number)

    def _remember_proposal(self, frozen: FrozenTrial) -> None:
        attrs = frozen.user_attrs
        self.last_number = frozen.number
        self.last_source = attrs.get(SOURCE)
        rationale = attrs.get(RATIONALE)
        self.last_rationale = str(rationale) if rationale else None

    def _start_live(self) -> None:
        try:
            from rich.console import Console
            from rich.live import Live

            before = (sys.stdout, sys.stderr)
            # stdout is a terminal (checked by the caller): say so, also to rich
            self._live = Live(
                console=Console(force_terminal=True), get_renderable=self.render,
                refresh_per_second=2, redirect_stdout=True, redirect_stderr=True,
            )
            self._live.start()
            self._log_redirect = _LogRedirect(before, (sys.stdout, sys.stderr))
        except Exception as exc:
            log.debug("progress: no live panel: %s", exc)
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()


def format_trial_line(
    frozen: FrozenTrial,
    *,
    objective_names: Sequence[str],
    best: Sequence[tuple[float, int] | None] = (),
) -> str:
    """The one-line log summary of a finished trial.

    Args:
        frozen: The trial after its tell.
        objective_names: One name per objective.
        best: Best (value, trial number) per objective so far, or None where there is none.

    Returns:
        E.g. ``trial 7 COMPLETE val/acc=0.9611 (best 0.9722 #3) source=llm 812 tok $0.0011 —
        Lower the learning rate``.
    """
    attrs = frozen.user_attrs
    parts = [f"trial {frozen.number} {frozen.state.name}"]
    if frozen.state == TrialState.COMPLETE and frozen.values:
        parts.append(" ".join(f"{name}={_num(v)}" for name, v in zip(
            objective_names, frozen.values, strict=False)))
    elif frozen.state == TrialState.PRUNED and frozen.last_step is not None:
        parts.append(f"at step {frozen.last_step}")
    best_text = " / ".join(f"{_num(b[0])} #{b[1]}" for b in best if b is not None)
    if best_text:
        parts.append(f"(best {best_text})")
    source = attrs.get(SOURCE)
    if source:
        parts.append(f"source={source}")
    if TOKENS_IN in attrs or TOKENS_OUT in attrs:
        tokens = int(attrs.get(TOKENS_IN, 0) or 0) + int(attrs.get(TOKENS_OUT, 0) or 0)
        parts.append(f"{tokens} tok")
    if COST_USD in attrs:
        parts.append(f"${float(attrs.get(COST_USD) or 0.0):.4f}")
    line = " ".join(parts)
    error = attrs.get(ERROR)
    if frozen.state == TrialState.FAIL and error:
        line += f" error: {_one_line(str(error), 120)}"
    rationale = attrs.get(RATIONALE)
    if rationale:
        line += " — " + _one_line(str(rationale), RATIONALE_CHARS)
    return line


class _LogRedirect:
    """Point logging stream handlers that write to the terminal at rich's proxies, and back.

    Handlers keep the stream object they were given (e.g. Hydra's console handler holds the
    real ``sys.stdout``), so without this their lines would cut through the live panel.
    """

    def __init__(self, before: tuple[Any, Any], after: tuple[Any, Any]) -> None:
        self.swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
        mapping = {id(b): a for b, a in zip(before, after, strict=True) if b is not a}
        for handler in _all_handlers():
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in mapping:
                old = handler.setStream(mapping[id(handler.stream)])
                self.swapped.append((handler, old))

    def restore(self) -> None:
        for handler, old in self.swapped:
            handler.setStream(old)
        self.swapped.clear()


def _all_handlers() -> list[logging.Handler]:
    handlers = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    seen: set[int] = set()
    unique = []
    for h in handlers:
        if id(h) not in seen:
            seen.add(id(h))
            unique.append(h)
    return unique


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _best_text(names: Sequence[str], best: Sequence[tuple[float, int] | None]) -> str:
    return "  ".join(f"{name}={_num(b[0])} (#{b[1]})"
                     for name, b in zip(names, best, strict=False) if b is not None)


def _num(value: float) -> str:
    return f"{value:.4g}"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
