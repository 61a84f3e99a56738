"""A scripted adversarial LLM for :class:`hpo.testing.FakeLLMServer`: the worst an LLM can do.

Its replies rotate through three behaviours, one per proposer request:

1. ``corner``: the next corner of the box from :meth:`Problem.corners` (ranked by their true
   value, the worst first: the script knows the objective) whose numbers were not
   proposed before (so that it is never a duplicate the sampler drops), cycling once all
   were;
2. ``off_space``: the next corner pushed out of the space (numbers far past the bound they sit
   on, a categorical value that is not a choice); asked to repair, it answers the same again,
   so the sampler clamps the numbers onto that corner and fills the categorical from TPE;
3. ``repeat``: the seed configuration, i.e. a repeat of the study's baseline trial.

Analyst and other non-proposer requests get the fake server's default (a schema-shaped reply).
``behaviours=("corner",)`` makes the harshest variant: a fresh worst corner on every call, as
the far-corner LLM that issue 12 measured against the 2-D sphere.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.testing.fake_llm import RecordedRequest
from quality.problems import Problem

BEHAVIOURS = ("corner", "off_space", "repeat")


class AdversarialResponder:
    """A :data:`hpo.testing.fake_llm.Responder` that proposes the worst it can.

    Args:
        problem: The problem whose corners and defaults it proposes.
        behaviours: The behaviours to rotate through, one per proposer request.
    """

    def __init__(self, problem: Problem, behaviours: tuple[str, ...] = BEHAVIOURS) -> None:
        unknown = sorted(set(behaviours) - set(BEHAVIOURS))
        if unknown or not behaviours:
            raise ValueError(f"behaviours {unknown or behaviours!r} are invalid: use some of "
                             f"{BEHAVIOURS}")
        self.problem = problem
        self.behaviours = tuple(behaviours)
        self._corners = problem.corners()
        self._numeric = [p.name for p in problem.space
                         if not isinstance(p.distribution, CategoricalDistribution)]
        self._used: set[tuple[Any, ...]] = set()
        self._cycle = 0
        self._proposer_calls = 0
        self._last_reply: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.counts = dict.fromkeys((*BEHAVIOURS, "repair_refused"), 0)

    def __call__(self, req: RecordedRequest) -> dict[str, Any] | None:
        props = (req.schema or {}).get("properties") or {}
        if "proposals" not in props:
            return None  # the analyst etc.: the fake server's schema-shaped default
        with self._lock:
            if "<errors>" in req.last_user_text and self._last_reply is not None:
                self.counts["repair_refused"] += 1
                return self._last_reply  # a stubborn repair: the same invalid values again
            behaviour = self.behaviours[self._proposer_calls % len(self.behaviours)]
            self._proposer_calls += 1
            self.counts[behaviour] += 1
            k = _n_proposals(req.last_user_text)
            proposals = [self._propose(behaviour) for _ in range(k)]
            reply = {"proposals": [{"params": p, "rationale": f"adversarial: {behaviour}"}
                                   for p in proposals],
                     "diagnosis": "adversarial script"}
            self._last_reply = reply
            return reply

    def _corner(self) -> dict[str, Any]:
        for pt in self._corners:
            key = tuple(pt[n] for n in self._numeric)
            if key not in self._used:
                self._used.add(key)
                return dict(pt)
        pt = self._corners[self._cycle % len(self._corners)]  # all used: repeat them
        self._cycle += 1
        return dict(pt)

    def _propose(self, behaviour: str) -> dict[str, Any]:
        if behaviour == "repeat":
            return dict(self.problem.defaults)
        pt = self._corner()
        if behaviour == "corner":
            return pt
        return {p.name: _off_space(p.distribution, pt[p.name]) for p in self.problem.space}


def _off_space(dist: Any, value: Any) -> Any:
    """``value`` (on a bound) pushed far outside the distribution; a non-choice for categories."""
    if isinstance(dist, CategoricalDistribution):
        return f"not-a-choice-{value}"
    assert isinstance(dist, FloatDistribution | IntDistribution)
    at_low = value == dist.low
    if dist.log:
        out = dist.low / 1000 if at_low else dist.high * 1000
    else:
        span = dist.high - dist.low
        out = dist.low - 10 * span if at_low else dist.high + 10 * span
    return int(out) if isinstance(dist, IntDistribution) and math.isfinite(out) else out


def _n_proposals(text: str) -> int:
    start = text.find("<n_proposals>")
    end = text.find("</n_proposals>")
    if start < 0 or end < 0:
        return 1
    try:
        return max(1, int(text[start + len("<n_proposals>"): end].strip()))
    except ValueError:
        return 1
