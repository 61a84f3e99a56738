"""Honest accounting: where a study's trials came from, read from storage only.

The sweeper prints :func:`llm_share_summary` at the end of every sweep and ``python -m
hpo.report`` shows it, so a sweep always says how many trials the LLM proposed, even 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import optuna

from hpo.attrs import FALLBACK_REASON, LEADER, LLM_CALLS_TOTAL, SOURCE, SOURCE_CHOICE
from hpo.samplers._choice import gather_evidence
from hpo.samplers._llm import source_kind

__all__ = ["SourceSummary", "llm_share_summary", "source_summary"]

_LEADER_NAMES = {"cmaes": "CMA-ES", "tpe": "TPE", "gp": "GP"}


@dataclass(frozen=True)
class SourceSummary:
    """Counts of a study's trials by source.

    Attributes:
        n: Every trial of the study.
        llm: Trials from an LLM proposal (``llm``, ``repaired`` and ``clamped``).
        repaired: Of those, trials with a value the repair call fixed.
        clamped: Of those, trials with a value clamped into range.
        fallback: Whole trials from the classical sampler instead of the LLM.
        reasons: The fallback trials by reason, most frequent first.
        baseline: The baseline trial (configured defaults).
        leader: Hybrid mode: trials of the leader.
        leader_name: Hybrid mode: ``cmaes``, ``tpe`` or ``gp``.
        other: Trials without a recorded source (another sampler, enqueued trials).
        llm_calls: LLM requests made (``hpo:llm_calls_total``).
        p_llm: The LLM's share used for the latest trial that recorded one, or None.
        llm_rank: Mean rank reward of the LLM's recent finished trials (None: none).
        classical_rank: The same for the classical sampler's trials.
    """

    n: int
    llm: int
    repaired: int
    clamped: int
    fallback: int
    reasons: dict[str, int] = field(default_factory=dict)
    baseline: int = 0
    leader: int = 0
    leader_name: str | None = None
    other: int = 0
    llm_calls: int = 0
    p_llm: float | None = None
    llm_rank: float | None = None
    classical_rank: float | None = None

    def text(self) -> str:
        """One paragraph, e.g. "3 of 20 trials came from the LLM (1 repaired, 0 clamped), 16
        from the fallback (bandit 12, share 3, llm_error:timeout 1), 1 baseline."."""
        if self.n and self.other == self.n and not self.llm_calls:
            return (f"0 of {self.n} trials came from the LLM: the sweep ran without one "
                    f"(a classical sampler chose all {self.n}).")
        parts = [
            f"{self.llm} of {self.n} trials came from the LLM ({self.repaired} repaired, "
            f"{self.clamped} clamped)"
        ]
        if self.leader:
            name = _LEADER_NAMES.get(self.leader_name or "", self.leader_name or "leader")
            parts.append(f"{self.leader} from the leader {name}")
        reasons = ", ".join(f"{k} {v}" for k, v in self.reasons.items())
        parts.append(f"{self.fallback} from the fallback" + (f" ({reasons})" if reasons else ""))
        parts.append(f"{self.baseline} baseline")
        if self.other:
            parts.append(f"{self.other} without a recorded source")
        out = ", ".join(parts) + f"; {self.llm_calls} LLM calls."
        if self.p_llm is not None:
            out += f" LLM share now {self.p_llm:.2f}"
            if self.llm_rank is not None and self.classical_rank is not None:
                out += (
                    f" (mean rank of its recent trials {self.llm_rank:.2f} vs "
                    f"{self.classical_rank:.2f} for the classical sampler's)"
                )
            out += "."
        return out


def source_summary(study: optuna.Study) -> SourceSummary:
    """Count ``study``'s trials by source (``hpo:source``, ``hpo:fallback_reason``,
    ``hpo:param_sources``, ``hpo:source_choice``)."""
    trials = study.get_trials(deepcopy=False)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    p_llm: float | None = None
    for t in trials:
        attrs = t.user_attrs
        src = attrs.get(SOURCE)
        counts[str(src) if src is not None else "other"] += 1
        if src == "fallback":
            reasons[str(attrs.get(FALLBACK_REASON) or "unknown")] += 1
        choice = attrs.get(SOURCE_CHOICE)
        if isinstance(choice, dict) and isinstance(choice.get("p_llm"), int | float):
            p_llm = float(choice["p_llm"])
    llm = counts["llm"] + counts["repaired"] + counts["clamped"]
    llm_rank = classical_rank = None
    if p_llm is not None:
        directions = [d.name.lower() for d in study.directions]
        ev = gather_evidence(trials, directions, source_kind)
        if ev.llm.n:
            llm_rank = ev.llm.total / ev.llm.n
        if ev.classical.n:
            classical_rank = ev.classical.total / ev.classical.n
    leader = study.user_attrs.get(LEADER)
    return SourceSummary(
        n=len(trials),
        llm=llm,
        repaired=counts["repaired"],
        clamped=counts["clamped"],
        fallback=counts["fallback"],
        reasons=dict(reasons.most_common()),
        baseline=counts["baseline"],
        leader=counts["leader"],
        leader_name=str(leader) if leader else None,
        other=counts["other"] + sum(
            v for k, v in counts.items()
            if k not in ("llm", "repaired", "clamped", "fallback", "baseline", "leader", "other")
        ),
        llm_calls=int(study.user_attrs.get(LLM_CALLS_TOTAL, 0) or 0),
        p_llm=p_llm,
        llm_rank=llm_rank,
        classical_rank=classical_rank,
    )


def llm_share_summary(study: optuna.Study) -> str:
    """"k of n trials came from the LLM (r repaired, c clamped), f from the fallback (reasons
    with counts), b baseline; m LLM calls." plus the leader's trials (hybrid) and the LLM's
    current share (damage control), read from storage."""
    return source_summary(study).text()
