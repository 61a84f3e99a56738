"""Which source proposes a trial, the LLM or the classical sampler: damage control.

Decided from storage only (the finished trials and their recorded sources), so a restarted
driver decides the same; deterministic given the sampler's seed and the history, so a rerun with
the reply cache replays exactly. Pure functions and frozen values; the sampler reads the trials
and records the decision (``hpo:source_choice``).

The rule, per trial number ``i``:

1. ``i < startup_trials``: classical (the baseline trial 0 counts).
2. The share asked for, ``base``: ``1 - fallback_share`` in ``propose`` mode, ``llm_share`` in
   ``hybrid`` mode; in hybrid mode a stall (no improvement in the last ``stall_trials`` finished
   trials) raises it to 1 for the next ``stall_trials`` trials, then the leader gets its turn
   again, alternating while the stall lasts.
3. The bandit: every finished trial earns a reward in [0, 1], the share of the other finished
   trials it beats (pruned and failed trials earn 0); each source's rewards over its last
   ``window`` trials give a Beta posterior, and ``P`` is the probability (normal approximation)
   that the LLM's mean reward is at least the classical one's. Once the LLM has
   ``min_evidence`` finished trials, the share becomes
   ``lo + (base - lo) * min(1, P / confidence)^2`` with ``lo = min(base, floor)``: an LLM that
   does as well as the classical sampler keeps its share, one that does clearly worse falls to
   the floor (never to 0, so it is still tried). The classical sampler keeps a share too, so
   there is always something to compare with: at least ``explore`` once the LLM has
   ``2 * min_evidence`` finished trials while the classical sampler has fewer, else
   ``floor``. An LLM trial whose reply left nothing usable (``no_proposal``) counts as a reward
   of 0 for the LLM.
4. A uniform draw from the seed and ``i`` (a hash, no RNG state) below the share: the LLM.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from optuna.trial import FrozenTrial, TrialState

__all__ = ["Evidence", "SharePolicy", "SourceChoice", "SourceStats", "draw", "gather_evidence"]

Source = Literal["llm", "classical"]
# ``llm_miss``: an LLM trial whose reply left nothing usable (the classical sampler filled it);
# it counts for the LLM with reward 0.
Kind = Literal["llm", "classical", "llm_miss"]


def draw(salt: int, number: int) -> float:
    """A uniform number in [0, 1) that depends only on ``salt`` and ``number``."""
    digest = hashlib.blake2b(f"{salt}:{number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class SourceStats:
    """The rewards of one source's recent finished trials.

    Attributes:
        n: How many trials.
        total: The sum of their rewards (each in [0, 1]).
    """

    n: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        """Mean reward, 0.5 (the prior's) with no trial."""
        return (1.0 + self.total) / (2.0 + self.n)

    @property
    def var(self) -> float:
        """Variance of the Beta(1 + total, 1 + n - total) posterior of the mean reward."""
        a, b = 1.0 + self.total, 1.0 + self.n - self.total
        return a * b / ((a + b) ** 2 * (a + b + 1.0))


@dataclass(frozen=True)
class Evidence:
    """What the history says, read once per decision.

    Attributes:
        llm: Rewards of the LLM's recent trials.
        classical: Rewards of the classical sampler's recent trials.
        since_improvement: Finished trials since the best one (single objective), else 0.
    """

    llm: SourceStats = SourceStats()
    classical: SourceStats = SourceStats()
    since_improvement: int = 0

    def p_llm_not_worse(self) -> float:
        """Posterior probability that the LLM's mean reward is at least the classical one's."""
        sd = math.sqrt(self.llm.var + self.classical.var)
        z = (self.llm.mean - self.classical.mean) / sd
        return 0.5 * math.erfc(-z / math.sqrt(2.0))


@dataclass(frozen=True)
class SourceChoice:
    """The decision for one trial, recorded as ``hpo:source_choice``.

    Attributes:
        to: ``llm`` or ``classical``.
        p_llm: The share (probability) of the LLM used for this trial.
        draw: The trial's uniform draw (None: no draw, e.g. startup).
        reason: ``startup``, ``share`` (the share asked for left it to the classical sampler),
            ``bandit`` (the bandit lowered the share below the draw), ``stall`` or ``share``
            for an LLM trial.
        why: One line a person can read.
    """

    to: Source
    p_llm: float
    draw: float | None
    reason: str
    why: str

    def as_attr(self) -> dict[str, Any]:
        """The JSON-able record stored on the trial."""
        out: dict[str, Any] = {"to": self.to, "p_llm": round(self.p_llm, 4)}
        if self.draw is not None:
            out["draw"] = round(self.draw, 4)
        out["reason"] = self.reason
        out["why"] = self.why
        return out


@dataclass(frozen=True)
class SharePolicy:
    """How trials are shared between the LLM and the classical sampler.

    Attributes:
        base: The LLM's share asked for, in [0, 1].
        floor: The lowest share the bandit may cut an LLM to (when ``base`` is above it).
        adaptive: Whether the bandit adapts the share (False: always ``base``).
        startup_trials: Trials numbered below this are classical.
        stall_trials: Hybrid: finished trials without improvement that make a stall (0: off).
        salt: The sampler's seed (or a random salt when unseeded).
        window: Each source's most recent finished trials the bandit reads.
        confidence: Below this posterior probability of "LLM not worse" the share is cut.
        min_evidence: The bandit acts once the LLM has this many finished trials.
        explore: The classical sampler's least share once the LLM has ``2 * min_evidence``
            finished trials while it has fewer.
    """

    base: float
    floor: float = 0.05
    adaptive: bool = True
    startup_trials: int = 0
    stall_trials: int = 0
    salt: int = 0
    window: int = 30
    confidence: float = 0.2
    min_evidence: int = 3
    explore: float = 0.2

    def decide(self, number: int, evidence: Evidence) -> SourceChoice:
        """The source of trial ``number`` given ``evidence``."""
        if number < self.startup_trials:
            return SourceChoice(
                "classical", 0.0, None, "startup",
                f"trial {number} < startup_trials={self.startup_trials}",
            )
        base, why = self.base, f"share {self.base:.2f}"
        stall = self.stall_trials
        k = evidence.since_improvement
        stalled = stall > 0 and k >= stall and (k // stall) % 2 == 1
        if stalled:
            base, why = 1.0, f"stall (no improvement in {k} trials): share 1.00"
        p = base
        if self.adaptive and evidence.llm.n < self.min_evidence:
            why += f" (bandit waits for {self.min_evidence} finished LLM trials)"
        elif self.adaptive:
            lo = min(base, self.floor)
            prob = evidence.p_llm_not_worse()
            w = min(1.0, prob / self.confidence) ** 2 if self.confidence > 0 else 1.0
            enough = 2 * self.min_evidence
            keep = (
                self.explore
                if evidence.llm.n >= enough > evidence.classical.n
                else self.floor
            )
            p = min(lo + (base - lo) * w, max(lo, 1.0 - keep))
            why += (
                f" x bandit {w:.2f} (floor {self.floor:.2f}; mean rank of LLM trials "
                f"{_rank_text(evidence.llm)} vs classical {_rank_text(evidence.classical)})"
            )
        u = draw(self.salt, number)
        why += f" -> p_llm {p:.2f}, draw {u:.2f}"
        if u < p:
            return SourceChoice("llm", p, u, "stall" if stalled else "share", why)
        return SourceChoice("classical", p, u, "share" if u >= base else "bandit", why)


def _rank_text(stats: SourceStats) -> str:
    if stats.n == 0:
        return "none yet"
    return f"{stats.total / stats.n:.2f} over {stats.n}"


def gather_evidence(
    trials: Sequence[FrozenTrial],
    directions: Sequence[str],
    source_of: Callable[[FrozenTrial], Kind | None],
    *,
    window: int = 30,
) -> Evidence:
    """Read the bandit's evidence from the study's trials.

    Args:
        trials: Every trial of the study (any state).
        directions: ``minimize``/``maximize`` per objective.
        source_of: The source a finished trial counts for (``llm_miss``: for the LLM, with
            reward 0), or None to leave it out (trials of other samplers, re-run failures).
        window: Each source's most recent finished trials that count.
    """
    finished = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                          TrialState.FAIL)),
        key=lambda t: t.number,
    )
    complete = [t for t in finished if _finite(t)]
    reward = _rewards(complete, directions)
    picked: dict[str, list[float]] = {"llm": [], "classical": []}
    for t in reversed(finished):
        kind = source_of(t)
        if kind is None:
            continue
        src = "llm" if kind == "llm_miss" else kind
        if len(picked[src]) < window:
            picked[src].append(0.0 if kind == "llm_miss" else reward.get(t.number, 0.0))
    stats = {k: SourceStats(len(v), float(sum(v))) for k, v in picked.items()}
    return Evidence(
        llm=stats["llm"],
        classical=stats["classical"],
        since_improvement=_since_improvement(finished, directions),
    )


def _finite(t: FrozenTrial) -> bool:
    if t.state != TrialState.COMPLETE or not t.values:
        return False
    return all(isinstance(v, int | float) and math.isfinite(v) for v in t.values)


def _signs(directions: Sequence[str]) -> list[float]:
    return [1.0 if str(d).lower().startswith("min") else -1.0 for d in directions]


def _rewards(complete: list[FrozenTrial], directions: Sequence[str]) -> dict[int, float]:
    """Trial number -> share of the other complete trials it beats (ties count half)."""
    signs = _signs(directions)
    n = len(complete)
    if n == 0:
        return {}
    if n == 1:
        return {complete[0].number: 0.5}
    if len(signs) == 1:
        losses = sorted(signs[0] * t.values[0] for t in complete)
        out = {}
        for t in complete:
            v = signs[0] * t.values[0]
            worse = n - bisect.bisect_right(losses, v)
            ties = bisect.bisect_right(losses, v) - bisect.bisect_left(losses, v) - 1
            out[t.number] = (worse + 0.5 * ties) / (n - 1)
        return out
    # several objectives: the share of the (recent) others that do not dominate it
    recent = complete[-200:]
    pts = [[s * v for s, v in zip(signs, t.values, strict=True)] for t in recent]
    out = {}
    for t in complete:
        me = [s * v for s, v in zip(signs, t.values, strict=True)]
        dominated_by = sum(
            1 for p in pts
            if all(a <= b for a, b in zip(p, me, strict=True)) and p != me
        )
        out[t.number] = 1.0 - dominated_by / max(1, len(pts) - 1)
    return out


def _since_improvement(finished: list[FrozenTrial], directions: Sequence[str]) -> int:
    """Finished trials (by number) after the one that set the current best."""
    if len(directions) != 1:
        return 0
    sign = _signs(directions)[0]
    best = math.inf
    since = 0
    for t in finished:
        if _finite(t) and sign * t.values[0] < best:
            best, since = sign * t.values[0], 0
        else:
            since += 1
    return since
